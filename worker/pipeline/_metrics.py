"""Pipeline metrics that `worker.observability.metrics` does not define (yet).

Kept here, with the same conventions (bounded labels, `_total` counters), because that module
belongs to another engineer; move it there when convenient.
"""

from __future__ import annotations

from prometheus_client import Counter

STATE_RESETS = Counter(
    "roomserver_state_resets_total",
    "Merges that removed a member's join or lowered a power level with no event doing so.",
    ["kind"],
)
