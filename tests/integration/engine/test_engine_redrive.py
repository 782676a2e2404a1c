"""``radflow jobs redrive`` against the engine ``radflow up`` runs (:class:`Engine`), wired only
by the compiled manifests: the job tracker learns the Broker's URL from its SinkBinding."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import REPO, compile_to, fan_in_example, seed_study, study_event, wait_until
from radflow.cli import jobs as jobs_cli
from radflow.engine.config import load_engine_config
from radflow.engine.stack import Engine
from radflow.sdk import events
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore

pytestmark = pytest.mark.slow


def _job(tracker: str, job_id: str) -> dict[str, Any]:
    """GET /jobs/<id> (a blocking call: the engine's loop must not run it)."""
    with urllib.request.urlopen(f"{tracker}/jobs/{job_id}", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def _state(tracker: str, job_id: str) -> str | None:
    try:
        return str(_job(tracker, job_id)["state"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_redrive_publishes_through_the_sinkbinding_of_the_compiled_tracker(
    tmp_path: Path,
    store_settings: StoreSettings,
    store: ObjectStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # left exits 3 (stage.failed) until the test "fixes" it by creating FIXED
    fixed = tmp_path / "fixed"
    pipeline = fan_in_example()
    left = next(op for op in pipeline["operators"] if op["name"] == "left")
    command = left["container"]["command"]
    sleep = "time.sleep(float(os.environ.get('SLEEP_SECONDS') or 0))"
    command[2] = command[2].replace(sleep, "(os.path.exists(os.environ['FIXED']) or sys.exit(3))")
    left["variables"]["FIXED"] = str(fixed)
    kn = compile_to(pipeline, tmp_path / "knative")
    config = load_engine_config(
        None,
        state_dir=tmp_path / "state",
        manifests=kn,
        workdir=REPO,
        s3={"endpoint-url": store_settings.endpoint_url, "bucket": store_settings.bucket},
        prewarm=False,
    )
    req = seed_study(store, "fan-in-example", series=1, instances=1)

    async def scenario() -> dict[str, Any]:
        engine = Engine(config)
        await engine.start()
        try:
            assert engine.host is not None and engine.broker is not None
            tracker = engine.host.url("job-tracker")
            headers, body = events.to_binary(study_event(store, req))
            ingress = engine.broker.ingress_url("default", "radflow")
            post = urllib.request.Request(ingress, data=body, headers=headers, method="POST")
            await asyncio.to_thread(urllib.request.urlopen, post, timeout=30)

            def state_is(want: str) -> bool:
                return _state(tracker, req.job_id) == want

            await asyncio.to_thread(wait_until, lambda: state_is("failed"), "the job to fail", 90)
            fixed.touch()
            code = await asyncio.to_thread(
                jobs_cli.main, ["jobs", "redrive", req.job_id, "--url", tracker]
            )
            assert code == 0, capsys.readouterr().err
            await asyncio.to_thread(
                wait_until, lambda: state_is("completed"), "the re-driven job to complete", 90
            )
            return await asyncio.to_thread(_job, tracker, req.job_id)
        finally:
            await engine.stop()

    done = asyncio.run(scenario())
    assert "re-driven (#1) from left" in capsys.readouterr().out
    assert done["state"] == "completed" and done["redriven"] == 1, done
