"""dashboards/: the Grafana dashboard and the Prometheus alert rules.

Static: the JSON is a Grafana dashboard (panels with targets, a layout that fits, variables
that exist), the rules file is a Prometheus rules file with the alerts operations rely on.
Live: every metric a panel or a rule queries is one a real worker exports -- a worker is run
on the test broker, fed synthetic events (with poison, so dead-letter series exist too), and
its /metrics compared, family by family, with the queries.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from processors.codec import AvroCodec
from processors.event import EventLimits
from processors.synthetic import SyntheticSpec, generate
from streams.ops.observe import TERMINAL_OUTCOMES, outcome_totals
from streams.publish import make_producer, publish, routed
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from tests.dashboards.promql import family_of, read
from tests.streams.conftest import WorkerProcess

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
OVERVIEW = DASHBOARDS / "recon-overview.json"
ALERTS = DASHBOARDS / "alerts.yml"
# Labels Prometheus attaches at scrape time, and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "le"}
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OVERVIEW.read_text(encoding="utf-8"))
    return loaded


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels(load_dashboard()) for t in p.get("targets", [])]


def all_exprs() -> list[str]:
    """Every PromQL expression: panel targets, rule exprs and the variables' queries."""
    exprs = dashboard_exprs() + [rule["expr"] for rule in load_rules()]
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(<selector>, <label>): the selector is the PromQL part
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert inner, variable["definition"]
            exprs.append(inner.group(1))
    return exprs


# --- the PromQL reader itself ----------------------------------------------------------------


def test_promql_reader() -> None:
    q = read(
        'histogram_quantile(0.95, sum by (le, lane) (rate(recon_x_bucket{job="$job",'
        'instance=~"$instance"}[$__rate_interval])))'
    )
    assert q.metrics == {"recon_x_bucket"}
    assert q.matchers == {"recon_x_bucket": {"job", "instance"}}
    assert q.grouping == {"le", "lane"}
    q = read('absent(up{job="recon"} == 1) or count by (lane) (recon_y{a!~"b{1}"} == 0)')
    assert q.metrics == {"up", "recon_y"}
    q = read("sum(rate(a_sum[5m])) / sum(rate(a_count[5m])) > 1e3 and b offset 5m")
    assert q.metrics == {"a_sum", "a_count", "b"}
    q = read('max_over_time(recon_circuit_state{job="recon"}[2m]) == 2')
    assert q.metrics == {"recon_circuit_state"}
    types = {"h": "histogram", "c_total": "counter", "d": "counter", "g": "gauge"}
    assert family_of("h_bucket", types) == "h" and family_of("h_count", types) == "h"
    assert family_of("c_total", types) == "c_total" and family_of("d_total", types) == "d"
    assert family_of("g", types) == "g"
    assert family_of("g_total", types) is None and family_of("c", types) is None


# --- static shape ----------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = load_dashboard()
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        assert key in dashboard, key
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    queried = 0
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0 and grid["y"] >= 0
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        assert panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "state-timeline", "gauge", "table"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]
            used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", target["expr"]))
            assert used - {"__rate_interval"} <= set(variables), (panel["title"], used)
            queried += 1
    assert queried >= 20


def test_dashboard_covers_the_overview() -> None:
    """The panels the overview promises: throughput by outcome, lag in messages and seconds,
    latency quantiles from the histograms, in-flight, the governor, paused partitions, the
    circuit, retries and dead letters, retry lateness, rebalances."""
    queried = set().union(*(read(e).metrics for e in dashboard_exprs()))
    for name in (
        "recon_records_outcome_total",
        "recon_consumer_lag_messages",
        "recon_consumer_lag_seconds",
        "recon_apply_duration_seconds_bucket",
        "recon_end_to_end_latency_seconds_bucket",
        "recon_in_flight_records",
        "recon_governor_state",
        "recon_governor_limit",
        "recon_paused_partitions",
        "recon_circuit_state",
        "recon_retry_lateness_seconds_bucket",
        "recon_rebalances_total",
        "up",
    ):
        assert name in queried, name
    exprs = " ".join(dashboard_exprs())
    assert 'outcome="retried"' in exprs and 'outcome="dead_lettered"' in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(recon_apply_duration_seconds" in exprs


def test_alert_rules_file() -> None:
    rules = load_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" not in rule or _DURATION.match(rule["for"]), rule["alert"]
        assert read(rule["expr"]).metrics, rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    # the alerts operations rely on
    assert re.fullmatch(r'up\{job="recon"\} == 0', by_name["ReconWorkerDown"]["expr"])
    assert "recon_ready" in by_name["ReconWorkerNotReady"]["expr"]
    assert "deriv(recon_consumer_lag_messages" in by_name["ReconLagGrowing"]["expr"]
    assert 'outcome="dead_lettered"' in by_name["ReconDeadLetterRate"]["expr"]
    assert "recon_circuit_state" in by_name["ReconCircuitOpen"]["expr"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_rules_and_every_expression(tmp_path: Path) -> None:
    """Prometheus' own parser, where promtool is installed (Debian: apt-get install
    prometheus): the rules file as it is, and each dashboard expression, its Grafana
    variables substituted, as a recording rule."""
    checked = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = []
    for n, expr in enumerate(all_exprs()):
        expr = expr.replace("$__rate_interval", "1m")
        rules.append({"record": f"dashboard:expr_{n}", "expr": re.sub(r"\$\{?\w+\}?", "x", expr)})
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- live: every queried metric is exported --------------------------------------------------


def exposition(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode("utf-8"))


def declared_families(text: str) -> dict[str, str]:
    """``# TYPE`` name -> type; each also needs its ``# HELP`` line."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    helps = set(re.findall(r"^# HELP (\S+) ", text, re.MULTILINE))
    assert set(types) <= helps, f"families without HELP: {set(types) - helps}"
    return types


def sample_labels(text: str) -> dict[str, set[str]]:
    """Sample name -> label names seen on it."""
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s", line)
        assert match, line
        names = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', match.group(3) or ""))
        labels.setdefault(match.group(1), set()).update(names)
    return labels


def wait_until_processed(worker: WorkerProcess, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline:
        totals = outcome_totals([worker.metrics_url])
        done = sum(totals[o] for o in TERMINAL_OUTCOMES)
        if done >= count:
            return
        assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"{done}/{count} records processed in {timeout_s}s")


def publish_synthetic(settings: Settings, count: int, seed: int) -> int:
    """``count`` events, each on its priority lane's topic, 5% poison; returns published."""
    lanes = TopicNames.from_settings(settings)
    spec = SyntheticSpec(count=count, entities=50, poison_rate=0.05, seed=seed)
    records = (
        routed(lanes, r.key.encode(), r.value, r.event.priority if r.event else None)
        for r in generate(spec, AvroCodec(EventLimits()))
    )
    report = publish(make_producer(settings), settings.topic, records)
    assert report.failed == 0 and report.published == count
    return report.published


@pytest.mark.broker
@pytest.mark.slow
def test_every_queried_metric_is_exported(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    ensure_topics(settings)
    worker = start_worker(settings)
    published = publish_synthetic(settings, 300, seed=11)
    wait_until_processed(worker, published, timeout_s=120)
    time.sleep(1.5)  # one more lag refresh and governor tick after the last batch
    text = exposition(worker.metrics_url)

    types = declared_families(text)
    labels = sample_labels(text)
    totals = outcome_totals([worker.metrics_url])
    assert totals["dead_lettered"] > 0 and totals["applied"] > 0  # poison went to the DLT

    unknown: dict[str, list[str]] = {}
    for expr in all_exprs():
        query = read(expr)
        known_labels: set[str] | None = set(TARGET_LABELS)
        for name in query.metrics - {"up"}:  # `up`: Prometheus' own, per scrape target
            if family_of(name, types) is None:
                unknown.setdefault(name, []).append(expr)
                continue
            if name not in labels:  # a labelled family without series yet: labels unknown
                known_labels = None
                continue
            extra = query.matchers.get(name, set()) - labels[name] - TARGET_LABELS
            assert not extra, f"{name} has no label(s) {extra} (has {labels[name]}): {expr}"
            if known_labels is not None:
                known_labels |= labels[name]
        if known_labels is not None:
            assert query.grouping <= known_labels, (query.grouping - known_labels, expr)
    assert not unknown, f"queried but not exported: {sorted(unknown)}"
    assert worker.stop() == 0
