"""WorkloadRunner with real processes: SinkBinding env, crash restarts, embedded launchers."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from radflow.engine.host import LaunchContext, WorkloadRunner, register_launcher
from radflow.sdk.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]

# records what the process saw, crashes on its first run, then stays up like a DICOM listener would
WORKER = """
import json, os, sys, time
out = sys.argv[1]
with open(out, "a") as fh:
    seen = {name: os.environ.get(name) for name in ("K_SINK", "K_CE_OVERRIDES", "ROLE")}
    fh.write(json.dumps({"pid": os.getpid(), **seen}) + "\\n")
if sum(1 for _ in open(out)) < 2:
    print("first run: crashing on purpose", flush=True)
    sys.exit(3)
while True:
    time.sleep(1)
"""


def deployment(
    name: str, labels: dict[str, str], args: list[str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": labels,
            "annotations": annotations or {},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": name,
                            "image": f"radflow/{name}",
                            "command": ["python"],
                            "args": args,
                            "env": [{"name": "ROLE", "value": name}],
                        }
                    ]
                },
            },
        },
    }


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_sinkbinding_subject_gets_k_sink_and_crashes_are_restarted(tmp_path: Path) -> None:
    adapter_out, other_out = tmp_path / "adapter.jsonl", tmp_path / "other.jsonl"
    deployments = [
        deployment("dicom-adapter", {"app": "dicom-adapter"}, ["-c", WORKER, str(adapter_out)]),
        deployment("bystander", {"app": "bystander"}, ["-c", WORKER, str(other_out)]),
    ]
    binding = {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "SinkBinding",
        "metadata": {"name": "adapter-to-broker", "namespace": "default"},
        "spec": {
            "subject": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "selector": {"matchLabels": {"app": "dicom-adapter"}},
            },
            "sink": {
                "ref": {
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Broker",
                    "name": "pipeline",
                }
            },
            "ceOverrides": {"extensions": {"radflowsite": "lab <1>", "a": "1"}},
        },
    }
    resolved: list[tuple[dict[str, Any], str]] = []

    def resolve(sink: dict[str, Any], namespace: str) -> str:
        resolved.append((sink, namespace))
        return "http://127.0.0.1:9/default/pipeline"

    async def main() -> list[dict[str, Any]]:
        runner = WorkloadRunner(
            deployments=deployments,
            sinkbindings=[binding],
            resolve_sink=resolve,
            workdir=REPO,
            state_dir=tmp_path / "state",
            python=sys.executable,
            backoff_initial_s=0.2,
        )
        await runner.start()
        try:
            await wait_until(
                lambda: len(lines(adapter_out)) >= 2 and len(lines(other_out)) >= 2,
                20,
                "restart after crash",
            )
            await wait_until(
                lambda: all(s["state"] == "running" for s in runner.status()), 5, "running"
            )
            return runner.status()
        finally:
            await runner.stop()

    status = asyncio.run(main())
    first, second = lines(adapter_out)
    assert first["K_SINK"] == second["K_SINK"] == "http://127.0.0.1:9/default/pipeline"
    # Go json.Marshal of ceOverrides: sorted keys, no spaces, <>& escaped
    assert first["K_CE_OVERRIDES"] == '{"extensions":{"a":"1","radflowsite":"lab \\u003c1\\u003e"}}'
    assert first["ROLE"] == "dicom-adapter"
    assert resolved == [(binding["spec"]["sink"], "default")]
    assert all(rec["K_SINK"] is None and rec["K_CE_OVERRIDES"] is None for rec in lines(other_out))
    by_name = {s["name"]: s for s in status}
    assert by_name["dicom-adapter"]["restarts"] == 1 and by_name["dicom-adapter"]["sink"].endswith(
        "/pipeline"
    )
    assert by_name["dicom-adapter"]["last_exit_code"] == 3
    assert not alive(second["pid"])  # stop() took the running one down
    log = (tmp_path / "state" / "logs" / "dicom-adapter.log").read_text()
    assert (
        "first run: crashing on purpose" in log and "exited with code 3; restarting in 0.2s" in log
    )


def test_embedded_launcher_replaces_the_command_and_unknown_kinds_fail(tmp_path: Path) -> None:
    marker = tmp_path / "launched.json"
    seen: list[LaunchContext] = []

    def launch(ctx: LaunchContext) -> list[str]:
        seen.append(ctx)
        script = (
            "import json, os, time; "
            "env = json.dumps(dict(os.environ, PID=os.getpid())); "
            f"open({str(marker)!r} + '.tmp', 'w').write(env);"
            f" os.rename({str(marker)!r} + '.tmp', {str(marker)!r}); time.sleep(60)"
        )
        return [ctx.python, "-c", script]

    register_launcher("test-triton", launch)
    triton = deployment(
        "triton",
        {"app": "triton"},
        ["-c", "raise SystemExit('the image command must not run')"],
        annotations={"radflow.dev/embedded": "test-triton"},
    )

    async def main() -> None:
        runner = WorkloadRunner(
            deployments=[triton],
            sinkbindings=[],
            resolve_sink=lambda s, n: "",
            workdir=REPO,
            state_dir=tmp_path / "state",
            base_env={"RADFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:1"},
        )
        await runner.start()
        try:
            await wait_until(marker.exists, 10, "launcher process")
            pid = runner.status()[0]["pid"]
            assert runner.status()[0]["kind"] == "test-triton" and alive(pid)
            assert json.loads(marker.read_text())["PID"] == pid  # the launched command runs
        finally:
            await runner.stop()
        assert not alive(pid)

        unknown = deployment(
            "mystery",
            {"app": "m"},
            ["-c", "pass"],
            annotations={"radflow.dev/embedded": "no-such-kind"},
        )
        bad = WorkloadRunner(
            deployments=[unknown],
            sinkbindings=[],
            resolve_sink=lambda s, n: "",
            workdir=REPO,
            state_dir=tmp_path,
        )
        with pytest.raises(ConfigError, match="mystery.*no-such-kind.*no local launcher"):
            await bad.start()

    asyncio.run(main())
    env = json.loads(marker.read_text())
    assert env["ROLE"] == "triton" and env["RADFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:1"
    assert seen[0].deployment.name == "triton" and seen[0].log_path.name == "triton.log"
