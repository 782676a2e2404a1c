"""``radflow up``'s configuration: the README's own example loads, and a bad file fails before
anything starts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from radflow.cli.main import load_up_config, parse_args

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_configuration_yaml() -> str:
    """The YAML block of README.md's "Configuration" section (read here so they cannot drift)."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match, "README.md's Configuration section has no ```yaml block"
    return match.group(1)


def test_the_readme_configuration_loads_with_radflow_ups_loader(tmp_path: Path) -> None:
    config_file = tmp_path / "dicom-adapter.yaml"
    config_file.write_text(readme_configuration_yaml())
    config = load_up_config(parse_args(["up", "--config", str(config_file)]))
    # the file's radflow: section is what the engine runs with
    assert config.state_dir == Path(".radflow").resolve()
    assert config.s3.endpoint_url == "http://127.0.0.1:9000"
    assert config.scale_to_zero_after == 60
    assert config.adapter_config == config_file.resolve()


def test_the_files_state_dir_is_kept_unless_the_option_is_given(tmp_path: Path) -> None:
    config_file = tmp_path / "engine.yaml"
    config_file.write_text("radflow:\n  state-dir: from-file\n")
    from_file = load_up_config(parse_args(["up", "--config", str(config_file)]))
    assert from_file.state_dir == Path("from-file").resolve()
    given = load_up_config(
        parse_args(["--state-dir", str(tmp_path / "opt"), "up", "--config", str(config_file)])
    )
    assert given.state_dir == tmp_path / "opt"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "dicom:\n  scp:\n    ae-titel: BRAINSEG\n",
            r"^radflow: \S+/bad\.yaml: dicom\.scp\.ae-titel: unknown key \(known here: ",
        ),
        (
            "dicom:\n  scp:\n    port: eleven\n",
            r"^radflow: \S+/bad\.yaml: dicom\.scp\.port: Input should be a valid integer",
        ),
    ],
)
def test_radflow_up_fails_fast_on_an_adapter_configuration_error(
    tmp_path: Path, text: str, needle: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    state = tmp_path / "state"
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "radflow.cli.main",
                "--state-dir",
                str(state),
                "up",
                "--config",
                str(bad),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"radflow up kept running on a bad configuration: {exc.stdout!r}")
    assert done.returncode == 2, done.stderr
    assert re.search(needle, done.stderr, re.M), done.stderr
    assert "radflow is up" not in done.stdout
    assert not (state / "engine.json").exists()  # nothing started
