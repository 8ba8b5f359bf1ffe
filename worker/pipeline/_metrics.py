"""Pipeline metrics that `worker.observability.metrics` may not define.

The state-reset counter belongs with the others in `worker.observability.metrics` (owned by
another engineer); until it is there it is defined here, with the same conventions (bounded
labels, `_total` counter). Either way it is registered once.
"""

from __future__ import annotations

from prometheus_client import Counter

from worker.observability import metrics as _shared


def _state_resets() -> Counter:
    existing = getattr(_shared, "STATE_RESETS", None)
    if isinstance(existing, Counter):
        return existing
    return Counter(
        "roomserver_state_resets_total",
        "Merges that removed a member's join or lowered a power level with no event doing so.",
        ["kind"],
    )


STATE_RESETS = _state_resets()
