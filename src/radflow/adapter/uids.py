"""What a valid DICOM UID is (PS3.5 9.1), checked before an instance is acknowledged.

UIDs end up in object keys, manifests and, downstream, in other systems' databases; a UID with
``/``, ``..``, letters or more than 64 characters is not DICOM and was acknowledged as Success.
The reasons name the rule, never the value (a UID can identify a patient's study).

Leading zeros in a component (``1.2.03``) break PS3.5 9.1 too, but older modalities send them
and the instance is otherwise fine: refusing it would lose a study for a rule that harms nothing
here (the value is still digits and dots, safe as a key). They are accepted.
"""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64
#: components of digits separated by dots (leading zeros tolerated, see above)
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a valid UID (a phrase without the value), or ``None``."""
    value = value.rstrip("\0")  # UI values are padded to even length with NUL
    if not value:
        return "is empty"
    if len(value) > MAX_UID_LENGTH:
        return f"is longer than {MAX_UID_LENGTH} characters (PS3.5 9.1)"
    if _UID.fullmatch(value) is None:
        return "is not a valid UID (PS3.5 9.1: digits and dots, no empty component)"
    return None
