"""``radflow up``'s configuration: the README's own example loads, and a bad file fails before
anything starts."""

from __future__ import annotations

import re
from pathlib import Path

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
