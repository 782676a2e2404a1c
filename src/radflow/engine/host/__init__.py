"""The embedded engine's function host: Knative Services and Deployments as local processes.

See docs/host.md for how a container maps to a process and which Knative Serving semantics
(activator hold, containerConcurrency, timeoutSeconds, scale to/from zero) are reproduced.
"""

from radflow.engine.host.activator import ServiceLaunch, register_service_launcher
from radflow.engine.host.functions import FunctionHost, log_file
from radflow.engine.host.logs import tail_log
from radflow.engine.host.prewarm import IMAGING_STACK
from radflow.engine.host.workloads import (
    EmbeddedWorkload,
    LaunchContext,
    WorkloadRunner,
    register_launcher,
)

__all__ = [
    "EmbeddedWorkload",
    "FunctionHost",
    "IMAGING_STACK",
    "LaunchContext",
    "ServiceLaunch",
    "WorkloadRunner",
    "log_file",
    "register_launcher",
    "register_service_launcher",
    "tail_log",
]
