"""radflow.demo: synthetic studies and the `radflow demo` runner."""
