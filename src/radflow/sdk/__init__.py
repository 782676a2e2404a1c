"""radflow.sdk: the platform SDK every deployable builds on (no imaging knowledge)."""
