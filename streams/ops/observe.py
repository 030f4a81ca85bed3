"""Reading a running worker from the outside: its /metrics, summed into outcome totals."""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

TERMINAL_OUTCOMES = ("applied", "duplicate", "stale", "dead_lettered")


def scrape(
    url: str, timeout_s: float = 2.0
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples at ``url`` as {(name, sorted labels): value}; empty if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
    except OSError:
        return {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape_total(url: str, name: str) -> float:
    """Sum of every sample named ``name`` at ``url`` (all label sets; 0 when unreachable)."""
    return sum(value for (sample, _), value in scrape(url).items() if sample == name)


def outcome_totals(urls: Iterable[str]) -> Counter[str]:
    """Records per outcome (applied, duplicate, stale, retried, dead_lettered), all workers."""
    totals: Counter[str] = Counter()
    for url in urls:
        for (name, labels), value in scrape(url).items():
            if name == "recon_records_outcome_total":
                totals[dict(labels)["outcome"]] += int(value)
    return totals


def histogram_quantile(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, q: float
) -> float | None:
    """The ``q`` quantile of histogram ``name`` (all label sets summed), from its buckets.

    Returns the upper bound of the bucket the quantile falls in (Prometheus-style estimates
    interpolate; an upper bound is the honest answer for "at most how late").
    """
    buckets: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        if sample != f"{name}_bucket":
            continue
        bound = float(dict(labels)["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total == 0:
        return None
    for bound in bounds:
        if buckets[bound] >= q * total:
            return bound
    return bounds[-1]
