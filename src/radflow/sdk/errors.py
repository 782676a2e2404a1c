"""Error types that say what should happen next.

::

    RadflowError
    ├── InvalidInput (also ValueError)  permanent: the input will not get better; do not retry.
    │                                   Operators reply with a ``…failed.v1`` event, the broker
    │                                   ingress answers 400, the adapter answers a DIMSE failure.
    ├── Unavailable                     transient: a dependency (S3, Triton, a peer) is down or
    │                                   busy; answer 503 so the broker retries with backoff.
    ├── StoreRefused                    permanent: the object store refused a request (403, 400,
    │                                   an invalid key, a body that kept failing its checksum);
    │                                   sending it again will not help. A stage replies
    │                                   ``…failed.v1``; the adapter parks the instance.
    └── ConfigError (also ValueError)   the process was started with a bad setting; stop early.

Messages name the file, field or tag and the rule, never a patient-identifying value.
"""

from __future__ import annotations


class RadflowError(Exception):
    """Root of radflow's own exceptions."""

    #: short machine-readable reason code (``snake_case``), carried in failed events
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidInput(RadflowError, ValueError):
    """Permanent failure: the input violates a rule; retrying cannot help."""

    code = "invalid_input"


class Unavailable(RadflowError):
    """Transient failure: a dependency is unreachable or busy; retry later."""

    code = "unavailable"


class StoreRefused(RadflowError):
    """Permanent failure: the object store refused the request; retrying cannot help.

    Raised by :mod:`radflow.sdk.storage` for any answer that is neither success, a missing key,
    a lost condition nor transient. The message names the operation, the HTTP status and the
    S3 error code, never the key (keys hold UIDs).
    """

    code = "store_refused"


class ConfigError(RadflowError, ValueError):
    """A configuration file or setting is invalid; the message names the file and field."""

    code = "invalid_config"
