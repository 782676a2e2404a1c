"""radflow: event-driven AI pipelines for medical imaging on Knative."""

__version__ = "0.1.0"
