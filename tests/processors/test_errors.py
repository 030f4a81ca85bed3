from __future__ import annotations

import pickle

import pytest

from processors.errors import (
    ConflictError,
    DecodeError,
    DownstreamTimeout,
    DownstreamUnavailable,
    FailureKind,
    InvalidEvent,
    ReconError,
)


@pytest.mark.parametrize(
    ("cls", "kind", "reason"),
    [
        (DecodeError, FailureKind.PERMANENT, "undecodable"),
        (InvalidEvent, FailureKind.PERMANENT, "invalid"),
        (ConflictError, FailureKind.PERMANENT, "conflict"),
        (DownstreamUnavailable, FailureKind.TRANSIENT, "downstream_unavailable"),
        (DownstreamTimeout, FailureKind.TRANSIENT, "downstream_timeout"),
    ],
)
def test_kind_and_default_reason(cls: type[ReconError], kind: FailureKind, reason: str) -> None:
    err = cls("boom")
    assert isinstance(err, ReconError)
    assert err.kind is kind and type(err).kind is kind
    assert err.reason == reason and cls.reason == reason
    assert str(err) == "boom"


def test_reason_override_survives_pickling() -> None:
    err = DecodeError("record is too big", reason="too_large")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is DecodeError
    assert copy.reason == "too_large" and str(copy) == "record is too big"


def test_failure_kind_values_are_header_strings() -> None:
    assert str(FailureKind.TRANSIENT) == "transient"
    assert str(FailureKind.PERMANENT) == "permanent"
