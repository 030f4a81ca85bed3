"""Hypothesis strategies and small builders shared by the processors tests."""

from __future__ import annotations

from hypothesis import strategies as st

from processors.event import (
    MAX_OCCURRED_AT_MS,
    MAX_VERSION,
    MIN_OCCURRED_AT_MS,
    Op,
    Priority,
    ReconEvent,
    Scalar,
)

ids = st.from_regex(r"[A-Za-z0-9._:@/+=-]{1,24}", fullmatch=True)
# No lone surrogates and no NUL: validation rejects them (UTF-8 / PostgreSQL cannot hold them).
texts = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=24
)
scalars: st.SearchStrategy[Scalar] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
field_maps = st.dictionaries(texts.filter(bool), scalars, max_size=6)

events: st.SearchStrategy[ReconEvent] = st.builds(
    ReconEvent,
    event_id=ids,
    entity_id=ids,
    version=st.integers(min_value=0, max_value=MAX_VERSION),
    op=st.sampled_from(Op),
    fields=field_maps,
    priority=st.sampled_from(Priority),
    occurred_at_ms=st.integers(min_value=MIN_OCCURRED_AT_MS, max_value=MAX_OCCURRED_AT_MS),
    source=texts.filter(bool),
)


def make_event(
    entity_id: str = "acct-1",
    version: int = 1,
    event_id: str | None = None,
    op: Op = Op.UPSERT,
    fields: dict[str, Scalar] | None = None,
    priority: Priority = Priority.NORMAL,
    occurred_at_ms: int = 1_795_000_000_000,
    source: str = "test",
) -> ReconEvent:
    return ReconEvent(
        event_id=event_id if event_id is not None else f"{entity_id}:v{version}",
        entity_id=entity_id,
        version=version,
        op=op,
        fields=fields if fields is not None else {"seq": version},
        priority=priority,
        occurred_at_ms=occurred_at_ms,
        source=source,
    )
