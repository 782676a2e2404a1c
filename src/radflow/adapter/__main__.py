"""``python -m radflow.adapter --config FILE``: run the DICOM adapter until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from radflow.adapter.app import Adapter
from radflow.adapter.config import AdapterConfig, load_yaml
from radflow.adapter.settings import AdapterSettings
from radflow.sdk.errors import ConfigError, StoreRefused, Unavailable
from radflow.sdk.logging import configure_logging
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore

log = logging.getLogger("radflow.adapter")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radflow.adapter", description=__doc__)
    parser.add_argument(
        "--config", type=Path, help="Clara DICOM Adapter YAML (env RADFLOW_ADAPTER_CONFIG wins)"
    )
    args = parser.parse_args(argv)
    settings = AdapterSettings()
    configure_logging("dicom-adapter", settings.log_level, settings.log_format)
    # the environment wins so the engine can run the Deployment's command with local paths
    path = settings.config or args.config
    # handlers first: a SIGTERM while the receivers start must still stop cleanly
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    watched: Path | None = None
    try:
        if path is not None and Path(path).is_file():
            config = load_yaml(path)
            watched = Path(path)
        else:
            # no YAML (e.g. `radflow up` without --config): serve what was configured over REST
            # and persisted in the bucket, or nothing until `radflow dicom create aetitle ...`
            log.warning(
                "configuration file %s not found; using the persisted configuration only", path
            )
            config = AdapterConfig(port=11112)
        adapter = Adapter(settings, config, ObjectStore(StoreSettings()), watched).start()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except StoreRefused as exc:
        # permanent (bucket, credentials, permissions): restarting will not help
        log.error("the object store refuses the adapter's requests: %s", exc)
        return 2
    except Unavailable as exc:
        log.error(
            "cannot start (object store or receiver processes unavailable): %s; "
            "exiting so the supervisor restarts us",
            exc,
        )
        return 3
    done.wait()
    log.info("stopping")
    adapter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
