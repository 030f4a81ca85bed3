"""Priority lanes: ``critical``, ``normal`` and ``bulk`` (the event's ``priority``).

Each lane has its own topic beside the main one (``streams/topics.py``): ``<topic>.critical``,
``<topic>`` (normal) and ``<topic>.bulk``. The governor (``streams/backpressure/governor.py``)
decides which lanes run; ``streams/backpressure/lane_control.py`` enforces it. No
dependencies, so any module may import it.
"""

from __future__ import annotations

from enum import StrEnum


class Lane(StrEnum):
    """Priority lanes, highest first (the values are the event's ``priority``)."""

    CRITICAL = "critical"
    NORMAL = "normal"
    BULK = "bulk"


LANES: tuple[Lane, ...] = (Lane.CRITICAL, Lane.NORMAL, Lane.BULK)  # priority order
ALL_LANES: frozenset[Lane] = frozenset(LANES)


def lane_for_priority(priority: str) -> Lane:
    """The lane of an event's ``priority`` (unknown values ride the normal lane)."""
    try:
        return Lane(str(priority))
    except ValueError:
        return Lane.NORMAL
