"""Error types that say what should happen next.

::

    RadflowError
    ├── InvalidInput (also ValueError)  permanent: the input will not get better; do not retry.
    │                                   Operators reply with a ``…failed.v1`` event, the broker
    │                                   ingress answers 400, the adapter answers a DIMSE failure.
    ├── Unavailable                     transient: a dependency (S3, Triton, a peer) is down or
    │                                   busy; answer 503 so the broker retries with backoff.
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


class ConfigError(RadflowError, ValueError):
    """A configuration file or setting is invalid; the message names the file and field."""

    code = "invalid_config"
