"""The spool's folders: ``tmp/`` (half-received), ``data/`` (acknowledged, fsync'd), quarantine.

Why: C-STORE success may only be answered once the instance cannot be lost. The received file
is renamed into ``data/<association id>-<uuid>.dcm`` and then ``fsync``'d, file and folder,
before the handler returns: the file *is* the durable record (its name says which association
brought it, the DICOM header says the rest); its index row follows behind the ack.

This part needs no index, so a receiver process (adapter/receiver_worker.py) uses it to make
instances durable itself, while the adapter process alone owns the SQLite index. Spool names
never derive from UIDs.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


class SpoolFiles:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.data_dir = self.root / "data"
        self.quarantine_dir = self.root / "quarantine"
        for d in (self.root, self.tmp_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self.data_dir, os.O_RDONLY)

    def close(self) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def take_file(self, src: Path, assoc_id: str) -> str:
        """Move ``src`` into ``data/`` and make it durable; returns its spool name.

        Rename first, then fsync the file and the folder: the file's fsync commits the journal
        transaction holding the rename on ext4/XFS, so the folder's fsync is usually free.
        """
        name = f"{assoc_id}-{uuid.uuid4().hex}.dcm"
        dst = self.data_dir / name
        os.replace(src, dst)
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(self._dir_fd)
        return name

    @staticmethod
    def association_of(spool_name: str) -> str:
        return spool_name.rsplit("-", 1)[0]

    def path(self, spool_name: str) -> Path:
        return self.data_dir / spool_name

    def acknowledged(self) -> list[Path]:
        """Every acknowledged file still in ``data/``, by name."""
        return sorted(self.data_dir.iterdir())

    def unlink(self, spool_name: str) -> None:
        try:
            os.unlink(self.data_dir / spool_name)
        except FileNotFoundError:
            pass

    def quarantine(self, path: Path) -> None:
        """Move a file that cannot be indexed aside, where an operator can look at it."""
        self.quarantine_dir.mkdir(exist_ok=True)
        os.replace(path, self.quarantine_dir / path.name)

    def drop_partial_receives(self) -> None:
        """Remove half-received temp files: they were never acknowledged."""
        for leftover in self.tmp_dir.iterdir():
            try:
                leftover.unlink()
            except OSError:
                pass
