"""Just enough PromQL reading to list the metrics and labels an expression queries.

Not a parser: it strips what cannot name a metric (strings, durations, grouping clauses) and
keeps the identifiers that are not functions, aggregations or keywords. The dashboards and
alert rules only need that, and ``test_promql_reader`` pins it on the forms they use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_GRAFANA_VARIABLES = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")
_TEMPLATE_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"and", "or", "unless", "offset", "inf", "nan", "atan2"}
)


@dataclass
class Query:
    metrics: set[str] = field(default_factory=set)
    # metric -> label names its selectors match on
    matchers: dict[str, set[str]] = field(default_factory=dict)
    # label names in by/without/on/ignoring/group_* clauses
    grouping: set[str] = field(default_factory=set)


def read(expr: str) -> Query:
    """The metrics, matcher labels and grouping labels of a PromQL expression."""
    query = Query()
    text = _GRAFANA_VARIABLES.sub("5m", expr)
    text = _STRING.sub('""', text)
    text = _TEMPLATE_VARIABLE.sub("x", text)

    def selector(match: re.Match[str]) -> str:
        name, body = match.group(1), match.group(2)
        labels = {m.group(1) for m in _MATCHER.finditer(body)}
        if name is None:  # {__name__="..."} style: not used here, and not supported
            raise ValueError(f"selector without a metric name in {expr!r}")
        query.matchers.setdefault(name, set()).update(labels)
        return f" {name} "

    text = _SELECTOR.sub(selector, text)
    text = _RANGE.sub(" ", text)

    def grouping(match: re.Match[str]) -> str:
        query.grouping.update(p.strip() for p in match.group(2).split(",") if p.strip())
        return " "

    text = _GROUPING.sub(grouping, text)
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        query.metrics.add(name)
    for name in query.matchers:
        query.metrics.add(name)
    return query


def family_of(name: str, types: dict[str, str]) -> str | None:
    """The exposition family (a ``# TYPE`` name) that serves sample ``name``, or None.

    ``types`` maps each ``# TYPE`` name to its type. Counters may be declared with or without
    their ``_total``; histograms serve ``_bucket``, ``_sum`` and ``_count``.
    """
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
            return base
    if name.endswith("_total") and types.get(name.removesuffix("_total")) == "counter":
        return name.removesuffix("_total")
    return None
