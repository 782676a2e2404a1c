"""docs/operators.md, followed literally: a new operator added, compiled, tested and run.

The guide marks what to do: ``<!-- write: PATH -->`` before a code block writes that file,
``<!-- registry entry -->`` adds the block to ``OPERATORS`` in the registry, ``<!-- run -->``
runs each line of the block. This test does exactly that in a temporary copy of what the steps
touch (never in the repository), checks what the compile changed, then runs the new operator
end to end through the engine's broker and function host (what ``radflow up`` runs) against
real SeaweedFS: a study that passes and one its variable makes fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_support import seed_study, store_env, study_event
from radflow.sdk import events
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operators.md"
#: what the guide's steps read or write
COPIED = ["src", "pipelines", "knative", "deploy", "skaffold.yaml", "pyproject.toml", "scripts"]
STEP = re.compile(
    r"<!-- (?:write: (?P<path>\S+)|(?P<entry>registry entry)|(?P<run>run)) -->\n"
    r"```[a-z]*\n(?P<body>.*?)```\n",
    re.S,
)
OPERATORS_END = "\n)\n"


def guide_steps() -> list[re.Match[str]]:
    return list(STEP.finditer(GUIDE.read_text(encoding="utf-8")))


def copy_repo(dest: Path) -> None:
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    # the guide's commands use the project's virtualenv, as the README's do
    (dest / ".venv").symlink_to(Path(sys.prefix))


def follow(copy: Path, env: dict[str, str]) -> list[str]:
    """Apply every step of the guide in ``copy``; returns the commands it ran."""
    ran: list[str] = []
    for step in guide_steps():
        body = step["body"]
        if step["path"]:
            target = copy / step["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body, encoding="utf-8")
        elif step["entry"]:
            registry = copy / "src/radflow/functions/registry.py"
            text = registry.read_text(encoding="utf-8")
            start = text.index("OPERATORS: tuple[OperatorEntry, ...] = (")
            end = text.index(OPERATORS_END, start)
            registry.write_text(text[:end] + "\n" + body.rstrip("\n") + text[end:])
        else:
            for line in body.splitlines():
                done = subprocess.run(
                    ["bash", "-c", line],
                    cwd=copy,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
                ran.append(line)
    return ran


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in svc["spec"]["template"]["spec"]["containers"][0]["env"]}


def generated(root: Path) -> dict[str, str]:
    files = [root / "skaffold.yaml", *sorted((root / "knative").rglob("*.yaml"))]
    files += sorted((root / "deploy").rglob("*.yaml"))
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in files}


def test_the_guide_has_every_step() -> None:
    steps = guide_steps()
    written = {s["path"] for s in steps if s["path"]}
    assert {
        "src/radflow/functions/series_count/__init__.py",
        "src/radflow/functions/series_count/settings.py",
        "src/radflow/functions/series_count/logic.py",
        "src/radflow/functions/series_count/README.md",
        "pipelines/series-count.yaml",
        "tests/unit/test_series_count.py",
    } == written
    assert sum(1 for s in steps if s["entry"]) == 1
    commands = [line for s in steps if s["run"] for line in s["body"].splitlines()]
    assert ".venv/bin/radflow pipeline compile --check" in commands


def test_adding_an_operator_by_the_guide_compiles_and_runs_end_to_end(
    tmp_path: Path, store_settings: StoreSettings, store: ObjectStore
) -> None:
    copy = tmp_path / "repo"
    copy.mkdir()
    copy_repo(copy)
    before = generated(copy)
    env = {**os.environ, "PYTHONPATH": str(copy / "src")}
    ran = follow(copy, env)
    assert ".venv/bin/radflow pipeline compile --check" in ran

    # what the compile changed: the new pipeline's files, the tracker's DAGs, the lists
    after = generated(copy)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed == {
        "knative/pipelines/series-count/services.yaml",
        "knative/pipelines/series-count/triggers.yaml",
        "knative/platform/job-tracker.yaml",
        "knative/kustomization.yaml",
        "skaffold.yaml",
    }
    (svc,) = yaml_docs(copy / "knative/pipelines/series-count/services.yaml")
    container = svc["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "radflow/series-count"
    assert container["resources"] == {  # + the /tmp scratch's ephemeral storage
        "requests": {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "1024Mi"},
        "limits": {"memory": "256Mi", "ephemeral-storage": "8768Mi"},
    }
    assert env_of(svc)["RADFLOW_OPERATOR"] == "series_count"
    assert env_of(svc)["FUNCTION_SOURCE"] == "src/radflow/functions/entry.py"
    skaffold = yaml.safe_load((copy / "skaffold.yaml").read_text(encoding="utf-8"))
    assert {
        "image": "radflow/series-count",
        "context": ".",
        "docker": {
            "dockerfile": "docker/functions.Dockerfile",
            "buildArgs": {"OPERATOR": "series_count", "EXTRAS": ""},
        },
    } in skaffold["build"]["artifacts"]

    ok = seed_study(store, "series-count", series=2, instances=3)
    small = seed_study(store, "series-count", series=2, instances=1)
    jobs = asyncio.run(
        run_engine(copy, tmp_path / "state", store_settings, [ok, small], timeout=180)
    )

    assert jobs[ok.job_id]["state"] == "completed", jobs[ok.job_id]
    counts = json.loads(
        store.get_bytes(Keys.stage_output(ok.job_id, "count", "default", "series.json"))
    )
    assert sorted(counts.values()) == [3, 3] and len(counts) == 2
    failed = jobs[small.job_id]
    assert failed["state"] == "failed", failed
    assert failed["stages"]["count"]["state"] == "failed"
    assert failed["stages"]["count"]["reason"] == "series_too_small"


async def run_engine(
    copy: Path,
    state: Path,
    settings: StoreSettings,
    requests: list[events.JobRequested],
    *,
    timeout: float,
) -> dict[str, dict[str, Any]]:
    """The copy's series-count pipeline and job tracker on the engine; each job's final document."""
    from radflow.engine.broker import BrokerRuntime
    from radflow.engine.host import FunctionHost

    mine = [
        *yaml_docs(copy / "knative/pipelines/series-count/services.yaml"),
        *yaml_docs(copy / "knative/pipelines/series-count/triggers.yaml"),
        *yaml_docs(copy / "knative/platform/job-tracker.yaml"),
    ]
    services = [d for d in mine if d["kind"] == "Service"]
    triggers = [d for d in mine if d["kind"] == "Trigger"]
    host = FunctionHost(
        services=services,
        workdir=copy,
        state_dir=state / "host",
        base_env={**os.environ, "PYTHONPATH": str(copy / "src"), **store_env(settings)},
    )
    await host.start()

    def resolve(dest: dict[str, Any], namespace: str) -> str:
        ref = dest["ref"]
        return host.url(ref["name"], ref.get("namespace") or namespace)

    broker = BrokerRuntime(
        brokers=yaml_docs(copy / "knative/broker.yaml"),
        triggers=triggers,
        state_dir=state / "broker",
        resolve=resolve,
    )
    await broker.start()
    store = ObjectStore(settings)
    try:
        for req in requests:
            headers, body = events.to_binary(study_event(store, req))
            post = urllib.request.Request(
                broker.ingress_url("default", "radflow"), data=body, headers=headers
            )
            status = await asyncio.to_thread(lambda r=post: urllib.request.urlopen(r).status)
            assert status == 202
        tracker = host.url("job-tracker")
        return {
            req.job_id: await asyncio.to_thread(final_job, tracker, req.job_id, timeout)
            for req in requests
        }
    finally:
        await broker.stop()
        await host.stop()


def final_job(tracker: str, job_id: str, timeout: float) -> dict[str, Any]:
    """The tracker's document once the job is completed or failed (its final states)."""
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{tracker}/jobs/{job_id}", timeout=30) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: the tracker has not seen the job yet
                raise
        if doc.get("state") in ("completed", "failed"):
            return doc
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not final after {timeout} s: {doc}")
