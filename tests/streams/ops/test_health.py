"""Readiness rules and worker-side lag (WorkerHealth), and the ops HTTP endpoint."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, Counter

from streams.ops.health import WorkerHealth
from streams.ops.server import OpsServer, event_loop_liveness


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    stall_s: float = 30.0, grace: dict[str, float] | None = None
) -> tuple[WorkerHealth, Clock]:
    clock = Clock()
    health = WorkerHealth(
        stall_s=stall_s,
        grace_s=lambda topic: (grace or {}).get(topic, 0.0),
        clock=clock,
        wall_clock=lambda: 5000.0,
    )
    return health, clock


def test_not_ready_until_started_and_assigned() -> None:
    health, _ = make()
    assert health.evaluate(lambda tp: None).reason == "starting"
    health.on_started()
    verdict = health.evaluate(lambda tp: None)
    assert not verdict.ready and verdict.reason == "no partitions assigned"
    health.on_rebalance_start()
    assert health.evaluate(lambda tp: None).reason == "rebalancing"
    health.on_assigned([("t", 0), ("t", 1)])
    verdict = health.evaluate(lambda tp: 0)
    assert verdict.ready and verdict.reason == "2 partition(s) assigned, none stuck"


def test_lag_from_processed_offsets_and_high_watermarks() -> None:
    health, _ = make()
    health.on_started()
    health.on_assigned([("t", 0), ("t", 1), ("t", 2)])
    health.on_processed([Rec("t", 0, 9, 4_000_000), Rec("t", 0, 4, 3_000_000), Rec("t", 1, 19)])
    high = {("t", 0): 15, ("t", 1): 20, ("t", 2): 7}
    committed = {("t", 2): 3}
    verdict = health.evaluate(high.get, committed.get)
    by_tp = {(p.topic, p.partition): p for p in verdict.partitions}
    assert by_tp[("t", 0)].position == 10 and by_tp[("t", 0)].lag_messages == 5
    assert by_tp[("t", 0)].lag_seconds == pytest.approx(1000.0)  # 5000 s - 4,000,000 ms
    assert by_tp[("t", 1)].lag_messages == 0 and by_tp[("t", 1)].lag_seconds == 0.0
    # Nothing processed on t[2]: measured from the committed offset it started at.
    assert by_tp[("t", 2)].position == 3 and by_tp[("t", 2)].lag_messages == 4
    assert verdict.document()["lag_messages"] == 9


def test_lag_without_progress_for_stall_s_makes_it_unready_and_progress_heals() -> None:
    health, clock = make(stall_s=30.0)
    health.on_started()
    health.on_assigned([("t", 0)])
    high = {("t", 0): 100}
    health.on_processed([Rec("t", 0, 9)])
    clock.now += 30.0
    assert health.evaluate(high.get).ready  # exactly stall_s: not yet
    clock.now += 0.5
    verdict = health.evaluate(high.get)
    assert not verdict.ready
    assert verdict.reason == "1 partition(s) stuck: t[0] has lag 90 and no progress for 30s"
    assert verdict.document()["stalled"] == [
        {"topic": "t", "partition": 0, "lag_messages": 90, "idle_s": 30.5}
    ]
    health.on_processed([Rec("t", 0, 10)])
    assert health.evaluate(high.get).ready


def test_idle_without_lag_is_not_a_stall() -> None:
    health, clock = make(stall_s=5.0)
    health.on_started()
    health.on_assigned([("t", 0)])
    health.on_processed([Rec("t", 0, 9)])
    high = {("t", 0): 10}
    clock.now += 100
    assert health.evaluate(high.get).ready
    # New records arrive: the stall clock starts now, not at the last processed record.
    high[("t", 0)] = 12
    clock.now += 4
    assert health.evaluate(high.get).ready
    clock.now += 2
    assert not health.evaluate(high.get).ready


def test_retry_tiers_get_their_delay_as_grace() -> None:
    health, clock = make(stall_s=5.0, grace={"t.retry.1": 60.0})
    health.on_started()
    health.on_assigned([("t.retry.1", 0)])
    high = {("t.retry.1", 0): 3}
    health.evaluate(high.get, lambda tp: 0)
    clock.now += 64
    assert health.evaluate(high.get, lambda tp: 0).ready
    clock.now += 2
    assert not health.evaluate(high.get, lambda tp: 0).ready


def test_unknown_high_watermark_is_no_lag() -> None:
    health, clock = make(stall_s=1.0)
    health.on_started()
    health.on_assigned([("t", 0)])
    clock.now += 10
    assert health.evaluate(lambda tp: None).ready


def test_reassignment_keeps_progress_and_drops_revoked_partitions() -> None:
    health, clock = make(stall_s=5.0)
    health.on_started()
    health.on_assigned([("t", 0), ("t", 1)])
    health.on_processed([Rec("t", 0, 41)])
    clock.now += 100  # partitions were paused by the rebalance: no stall carried over
    health.on_rebalance_start()
    health.on_revoked([("t", 1)])
    health.on_assigned([("t", 0), ("t", 2)])
    health.on_processed([Rec("t", 1, 7)])  # a late batch of a revoked partition: ignored
    verdict = health.evaluate({("t", 0): 50, ("t", 2): 0}.get)
    assert health.assignment == [("t", 0), ("t", 2)]
    assert verdict.ready
    assert [p.position for p in verdict.partitions] == [42, None]


# --- the HTTP endpoint -----------------------------------------------------------------------


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


@pytest.fixture
def running_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def test_endpoints(running_loop: asyncio.AbstractEventLoop) -> None:
    registry = CollectorRegistry()
    Counter("recon_test_things_total", "things", registry=registry).inc(3)
    state = {"ready": False}

    def readiness() -> tuple[bool, dict[str, object]]:
        return state["ready"], {"ready": state["ready"], "reason": "because"}

    server = OpsServer(
        "127.0.0.1", 0, registry, event_loop_liveness(running_loop, 2.0), readiness
    ).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body, content_type = _get(f"{base}/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        assert b"recon_test_things_total 3.0" in body

        status, body, _ = _get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["alive"] is True

        status, body, content_type = _get(f"{base}/readyz")
        assert (status, content_type) == (503, "application/json")
        assert json.loads(body) == {"ready": False, "reason": "because"}
        state["ready"] = True
        assert _get(f"{base}/readyz")[0] == 200

        assert _get(f"{base}/nope")[0] == 404
    finally:
        server.stop()


def test_liveness_fails_when_the_loop_is_blocked(running_loop: asyncio.AbstractEventLoop) -> None:
    release = threading.Event()
    running_loop.call_soon_threadsafe(lambda: release.wait(10))  # blocks the loop
    try:
        ok, body = event_loop_liveness(running_loop, timeout_s=0.3)()
        assert not ok and "did not answer" in str(body["reason"])
    finally:
        release.set()
    ok, _ = event_loop_liveness(running_loop, timeout_s=5)()
    assert ok


def test_liveness_fails_when_the_loop_is_not_running() -> None:
    loop = asyncio.new_event_loop()
    try:
        ok, body = event_loop_liveness(loop)()
        assert not ok and body["reason"] == "event loop not running"
    finally:
        loop.close()


def test_counts_records_settled_again_as_redeliveries() -> None:
    health, _ = make()
    health.on_started()
    health.on_assigned([("t", 0), ("t", 1)])
    assert health.on_processed([Rec("t", 0, 0), Rec("t", 0, 1), Rec("t", 1, 0)]) == 0
    assert health.on_processed([Rec("t", 0, 2)]) == 0  # new progress
    # A rewind re-delivers offsets 1 and 2 of partition 0, then 3 is new.
    assert health.on_processed([Rec("t", 0, 1), Rec("t", 0, 2), Rec("t", 0, 3)]) == 2
    assert health.on_processed([Rec("t", 2, 0)]) == 0  # not assigned: ignored
