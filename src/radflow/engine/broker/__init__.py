"""The embedded engine's durable, Knative-faithful Broker (see docs/broker.md).

Public API: :class:`BrokerRuntime`; ``python -m radflow.engine.broker`` runs it standalone.
"""

from radflow.engine.broker.runtime import BrokerRuntime

__all__ = ["BrokerRuntime"]
