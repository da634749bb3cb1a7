"""The error taxonomy: stable unique codes, OCI codes, and lossless round trips."""

from __future__ import annotations

import json

import celery
import pytest

from ingest import errors
from ingest.errors import ClientError, IngestError, ServerError, error_classes, from_dict

BASES: tuple[type[IngestError], ...] = (IngestError, ClientError, ServerError)
LEAVES = [cls for cls in error_classes() if cls not in BASES]

OCI_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
}
DISTRIBUTION_EXTRA_CODES = {"RANGE_INVALID"}


def _ids(classes: list[type[IngestError]]) -> list[str]:
    return [c.__name__ for c in classes]


def test_error_classes_lists_parents_before_children() -> None:
    classes = error_classes()
    assert classes[0] is IngestError
    for i, cls in enumerate(classes):
        for base in cls.__mro__[1:]:
            if isinstance(base, type) and issubclass(base, IngestError):
                assert classes.index(base) < i


def test_every_exported_error_class_is_in_the_walk() -> None:
    exported = {
        getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)
    }
    assert exported == set(error_classes())


def test_codes_declared_by_a_class_are_unique_among_leaves() -> None:
    owners: dict[str, list[str]] = {}
    for cls in LEAVES:
        if "code" in cls.__dict__:
            owners.setdefault(cls.__dict__["code"], []).append(cls.__name__)
    duplicates = {code: names for code, names in owners.items() if len(names) > 1}
    assert duplicates == {}
    assert len(owners) >= 12


@pytest.mark.parametrize("cls", LEAVES, ids=_ids(LEAVES))
def test_client_error_codes_come_from_the_oci_distribution_list(cls: type[IngestError]) -> None:
    if 400 <= cls.http_status < 500:
        assert issubclass(cls, ClientError)
        assert cls.code in OCI_CODES | DISTRIBUTION_EXTRA_CODES
    else:
        assert issubclass(cls, ServerError)
        assert 500 <= cls.http_status < 600


@pytest.mark.parametrize("cls", LEAVES, ids=_ids(LEAVES))
def test_each_class_survives_a_json_args_round_trip(cls: type[IngestError]) -> None:
    e = cls("something went wrong", {"upload_id": "u", "offset": 3, "nested": {"a": [1, 2]}})
    rebuilt = cls(*json.loads(json.dumps(list(e.args))))
    assert type(rebuilt) is cls
    assert (rebuilt.code, rebuilt.message, rebuilt.detail) == (e.code, e.message, e.detail)
    assert str(rebuilt) == str(e)


@pytest.mark.parametrize("cls", LEAVES, ids=_ids(LEAVES))
def test_default_construction_uses_the_default_message_and_an_empty_detail(
    cls: type[IngestError],
) -> None:
    e = cls()
    assert e.message == cls.default_message
    assert e.detail == {}
    assert str(e) == f"{cls.code}: {cls.default_message}"
    rebuilt = cls(*json.loads(json.dumps(list(e.args))))
    assert (rebuilt.message, rebuilt.detail) == (e.message, e.detail)


@pytest.mark.parametrize("cls", LEAVES, ids=_ids(LEAVES))
def test_from_dict_rebuilds_the_class_that_owns_the_code(cls: type[IngestError]) -> None:
    e = cls("msg", {"k": "v"})
    wire = json.loads(json.dumps(e.to_dict()))
    assert wire == {"code": cls.code, "message": "msg", "detail": {"k": "v"}}
    rebuilt = from_dict(wire)
    assert (rebuilt.code, rebuilt.message, rebuilt.detail) == (e.code, "msg", {"k": "v"})
    # The wire carries only the code: a subclass sharing its parent's code (a finer
    # Python type) comes back as the class that declares the code.
    assert isinstance(e, type(rebuilt))
    assert "code" in type(rebuilt).__dict__
    if "code" in cls.__dict__:
        assert type(rebuilt) is cls
        assert (rebuilt.http_status, rebuilt.retryable) == (cls.http_status, cls.retryable)


def test_from_dict_maps_an_unknown_code_to_unknown() -> None:
    e = from_dict({"code": "SOMETHING_NEW", "message": "m", "detail": ["not", "a", "map"]})
    assert type(e) is errors.Unknown
    assert e.detail == {}
    assert e.message == "m"


@pytest.mark.parametrize("cls", LEAVES, ids=_ids(LEAVES))
def test_exit_code_follows_status_and_retryability(cls: type[IngestError]) -> None:
    e = cls()
    if cls.retryable:
        expected = errors.EXIT_UNAVAILABLE
    elif 400 <= cls.http_status < 500:
        expected = errors.EXIT_REJECTED
    else:
        expected = errors.EXIT_FAILURE
    assert e.exit_code == expected


@pytest.mark.parametrize(
    ("cls", "exit_code"),
    [
        (errors.DigestInvalid, 3),
        (errors.RangeInvalid, 3),
        (errors.BlobUnknown, 3),
        (errors.TooManyRequests, 4),
        (errors.StorageUnavailable, 4),
        (errors.VerificationTimeout, 4),
        (errors.Unknown, 1),
    ],
)
def test_exit_code_examples(cls: type[IngestError], exit_code: int) -> None:
    assert cls().exit_code == exit_code


@pytest.fixture(scope="module")
def celery_app() -> celery.Celery:
    app = celery.Celery(backend="cache+memory://", set_as_current=False)
    app.conf.result_serializer = "json"
    app.conf.accept_content = ["json"]
    app.conf.result_accept_content = ["json"]
    return app


@pytest.mark.parametrize("cls", LEAVES, ids=_ids(LEAVES))
def test_each_class_survives_celerys_json_result_backend(
    celery_app: celery.Celery, cls: type[IngestError]
) -> None:
    e = cls("worker says no", {"claimed": "sha256:ab", "computed": "sha256:cd", "n": 1})
    backend = celery_app.backend
    stored = backend.prepare_exception(e, "json")
    wire = json.loads(json.dumps(stored))
    assert wire["exc_type"] == cls.__name__
    rebuilt = backend.exception_to_python(wire)
    assert type(rebuilt) is cls
    assert isinstance(rebuilt, IngestError)
    assert (rebuilt.code, rebuilt.message, rebuilt.detail) == (e.code, e.message, e.detail)
