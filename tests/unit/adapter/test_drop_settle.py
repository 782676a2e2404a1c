"""The drop trigger's settle rule: a folder is taken once its listing has been quiet."""

from __future__ import annotations

from typing import Any

from radflow.adapter.drop import DropWatcher, is_temporary
from radflow.sdk.storage import ObjectInfo


def test_temporary_files_are_recognised() -> None:
    for key in ("inbox/A/x.dcm.part", "inbox/A/.x.dcm", "inbox/A/.tmp/x.dcm", "inbox/A/x.TMP"):
        assert is_temporary(key), key
    for key in ("inbox/A/x.dcm", "inbox/A/IM0001", "inbox/A/part/x"):
        assert not is_temporary(key), key


def test_a_folder_waits_until_its_listing_has_not_changed_for_settle_seconds() -> None:
    now = [0.0]
    watcher: Any = DropWatcher(None, "inbox/", 1.0, settle=5.0, clock=lambda: now[0])  # type: ignore[arg-type]
    a1 = ObjectInfo("inbox/A/1.dcm", 10, "e1")
    a2 = ObjectInfo("inbox/A/2.dcm", 10, "e2")
    part = ObjectInfo("inbox/A/3.dcm.part", 4, "e3")
    b1 = ObjectInfo("inbox/B/1.dcm", 10, "e4")
    assert watcher._settled([a1, b1]) == []  # first seen: wait
    now[0] = 4.0
    assert watcher._settled([a1, a2, b1]) == []  # A changed at 4 s; B quiet only 4 s
    now[0] = 5.0
    assert watcher._settled([a1, a2, b1]) == [b1]  # B quiet for 5 s
    now[0] = 9.5
    assert watcher._settled([a1, a2, part]) == []  # a temporary file changes A too
    now[0] = 14.5
    assert watcher._settled([a1, a2, part]) == [a1, a2]  # quiet: taken without the .part
    assert watcher._settled([ObjectInfo("inbox/A/1.dcm", 12, "e9")]) == []  # rewritten: waits
