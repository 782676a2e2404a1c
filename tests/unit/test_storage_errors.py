"""The one mapping of S3 answers to radflow's errors (sdk/storage.py ``_mapped``): pure logic."""

from __future__ import annotations

import pytest

from radflow.sdk.errors import RadflowError, StoreRefused, Unavailable
from radflow.sdk.storage import AlreadyExists, Changed, NotFound, _BadChecksum, _mapped

KEY = "studies/1.2.3/series/4.5.6/7.8.9.dcm"


@pytest.mark.parametrize(
    ("method", "status", "code", "raised"),
    [
        ("GET", 404, "NoSuchKey", NotFound),
        ("HEAD", 404, "", NotFound),
        ("PUT", 412, "PreconditionFailed", AlreadyExists),
        ("PUT", 409, "ConditionalRequestConflict", AlreadyExists),
        ("GET", 412, "PreconditionFailed", Changed),
        ("GET", 503, "SlowDown", Unavailable),
        ("PUT", 500, "InternalError", Unavailable),
        ("PUT", 408, "", Unavailable),
        ("PUT", 429, "", Unavailable),
        ("PUT", 400, "RequestTimeout", Unavailable),
        ("PUT", 400, "BadDigest", _BadChecksum),
        ("PUT", 400, "XAmzContentSHA256Mismatch", _BadChecksum),
        ("PUT", 403, "AccessDenied", StoreRefused),
        ("PUT", 400, "KeyTooLongError", StoreRefused),
        ("PUT", 400, "InvalidArgument", StoreRefused),
        ("GET", 404, "NoSuchBucket", StoreRefused),
        ("GET", 301, "PermanentRedirect", StoreRefused),
        ("DELETE", 405, "MethodNotAllowed", StoreRefused),
    ],
)
def test_each_answer_maps_to_one_error(method: str, status: int, code: str, raised: type) -> None:
    error = _mapped("op", method, KEY, status, code)
    assert type(error) is raised
    if isinstance(error, RadflowError):
        assert "1.2.3" not in str(error)  # messages never name the key (keys hold UIDs)


def test_refused_is_permanent_in_the_hierarchy() -> None:
    error = _mapped("put_object", "PUT", KEY, 403, "AccessDenied")
    assert isinstance(error, RadflowError) and not isinstance(error, Unavailable)
    assert error.code == "store_refused"
    with pytest.raises(
        StoreRefused, match=r"^object store put_object refused: HTTP 403 AccessDenied$"
    ):
        raise error
