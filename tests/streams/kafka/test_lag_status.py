"""The Burrow-style status rules, as a pure function over samples."""

from __future__ import annotations

import pytest

from streams.kafka.lag import (
    GroupLag,
    LagHistory,
    LagSample,
    PartitionLag,
    Status,
    StatusPolicy,
    evaluate_status,
    lag_document,
)

POLICY = StatusPolicy(window=5, min_samples=3, stop_after_s=60.0)


def series(*points: tuple[int | None, int], members: int | None = 1, step: float = 5.0) -> list:
    """Samples ``step`` seconds apart from (committed, lag) pairs."""
    return [
        LagSample(at_s=i * step, committed=c, lag=lag, members=members)
        for i, (c, lag) in enumerate(points)
    ]


def status(samples: list[LagSample]) -> Status:
    return evaluate_status(samples, POLICY).status


def test_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError):
        evaluate_status([], POLICY)


def test_caught_up_is_ok_whatever_came_before() -> None:
    assert status(series((10, 5), (10, 5), (10, 5), (15, 0))) is Status.OK


def test_one_sample_with_lag_and_members_is_ok() -> None:
    assert status(series((10, 5))) is Status.OK


def test_no_live_member_with_lag_is_stop() -> None:
    result = evaluate_status(series((10, 5), members=0), POLICY)
    assert result.status is Status.STOP
    assert "no live member" in result.reason


def test_unknown_members_do_not_mean_stop() -> None:
    assert status(series((10, 5), (20, 5), (30, 5), members=None)) is Status.OK


def test_committed_offset_not_moving_with_lag_is_a_stall() -> None:
    result = evaluate_status(series((10, 5), (10, 8), (10, 9)), POLICY)
    assert result.status is Status.ERR
    assert result.reason.startswith("STALL")


def test_too_few_samples_judge_no_stall() -> None:
    assert status(series((10, 5), (10, 8))) is Status.OK


def test_unchanged_for_stop_after_is_stop() -> None:
    # 13 samples 5 s apart = 60 s with the same committed offset.
    samples = series(*[(10, 5)] * 13)
    result = evaluate_status(samples, POLICY)
    assert result.status is Status.STOP
    assert "unchanged for 60s" in result.reason


def test_stall_is_judged_on_the_window_only() -> None:
    # It moved long ago, then stopped for a full window (25 s < stop_after): a stall.
    samples = series((1, 9), (2, 9), (10, 5), (10, 5), (10, 5), (10, 5), (10, 5))
    assert status(samples) is Status.ERR


def test_growing_lag_while_committing_is_warn() -> None:
    result = evaluate_status(series((10, 5), (20, 7), (30, 7), (40, 12)), POLICY)
    assert result.status is Status.WARN
    assert result.reason == "lag growing: 5 -> 12"


def test_shrinking_lag_is_ok() -> None:
    assert status(series((10, 50), (20, 40), (30, 45), (40, 30))) is Status.OK


def test_flat_lag_while_committing_is_ok() -> None:
    assert status(series((10, 5), (20, 5), (30, 5))) is Status.OK


def test_zero_lag_inside_the_window_is_ok() -> None:
    assert status(series((10, 0), (10, 3), (10, 4), (10, 6))) is Status.OK


def test_growth_older_than_the_window_is_forgotten() -> None:
    # Grew in the first samples, then shrank over the last 5 (the window).
    samples = series((1, 1), (2, 2), (3, 3), (4, 9), (5, 8), (6, 7), (7, 6), (8, 5))
    assert status(samples) is Status.OK


def test_never_committed_and_not_moving_with_members_is_a_stall() -> None:
    assert status(series((None, 5), (None, 5), (None, 5))) is Status.ERR


def test_statuses_are_ordered_by_severity() -> None:
    assert Status.OK < Status.WARN < Status.ERR < Status.STOP


def _measurement(at_s: float, committed: int, high: int) -> GroupLag:
    lag = high - committed
    partition = PartitionLag("t", 0, committed, high, lag, 1.5 if lag else 0.0, None)
    caught_up = PartitionLag("t.retry.1", 0, None, 0, 0, 0.0, None)
    return GroupLag("g", "STABLE", 2, at_s, (partition, caught_up))


def test_history_feeds_the_rules_and_the_json_document() -> None:
    history = LagHistory(POLICY)
    for i, (committed, high) in enumerate([(10, 15), (10, 18), (10, 20)]):
        measurement = _measurement(i * 5.0, committed, high)
        history.add(measurement)
    assert history.evaluate("t", 0).status is Status.ERR
    assert history.evaluate("t.retry.1", 0).status is Status.OK
    assert history.worst(measurement) is Status.ERR
    document = lag_document(measurement, history)
    assert document["status"] == "ERR"
    assert document["members"] == 2
    assert document["totals"] == {
        "t": {"lag_messages": 10, "max_lag_seconds": 1.5},
        "t.retry.1": {"lag_messages": 0, "max_lag_seconds": 0.0},
    }
    assert document["partitions"][0] == {
        "topic": "t",
        "partition": 0,
        "committed": 10,
        "high_watermark": 20,
        "lag_messages": 10,
        "lag_seconds": 1.5,
        "status": "ERR",
        "reason": "STALL: committed offset 10 not moving, lag 10",
    }


def test_history_is_bounded() -> None:
    history = LagHistory(POLICY, max_samples=4)
    for i in range(10):
        history.add(_measurement(float(i), i, i + 1))
    assert len(history._samples[("t", 0)]) == 4
