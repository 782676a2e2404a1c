"""radflow.cli: the ``radflow`` command, on top of everything else."""
