"""The write fence: a write computed from a stale view of its room is refused.

The pipeline computes a new event's extremities and current state from the room row the
store cached. A worker that owned the room before, lost it and got it back holds a stale
row, and so does a stale owner still finishing an event. A fenced write carries the view it
was computed from (`RoomView`); under the room's advisory lock the transaction's first read
of the room row compares the row in the database with it, and a difference raises
`StaleRoomView` (retryable) before anything is written: the consumer retries the event with
a fresh view (usually finding it already done). The advisory lock alone only serialises
writers; this comparison is what makes a stale writer harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.core.outcomes import Outcome
from worker.errors import RetryableError
from worker.pipeline.ports import EventWrite
from worker.storage.rooms import RoomRow


@dataclass(frozen=True, slots=True)
class RoomView:
    """The room row as the pipeline saw it when it computed a write."""

    current_snapshot_nid: int | None
    extremities: tuple[str, ...]


class StaleRoomView(RetryableError):
    """The room changed in the database since this worker read it: recompute and retry."""

    code = "stale_room_view"


def reads_room_row(w: EventWrite) -> bool:
    """Whether the write was computed from the room's row: new extremities or current
    state, or a soft-fail (decided against the current state)."""
    return (
        w.extremities is not None
        or w.current_state is not None
        or w.outcome is Outcome.SOFT_FAILED
    )


def check_view(room: RoomRow, expected: RoomView | None) -> None:
    """Refuse the write unless the room row read under its lock is the one it was computed
    from (`expected`; None: the write is not fenced)."""
    if expected is None:
        return
    have = RoomView(room.current_snapshot_nid, tuple(sorted(room.extremities)))
    if have != expected:
        raise StaleRoomView(
            f"room {room.room_id} changed since it was read (another worker wrote it)",
            delay=0.05,
        )


__all__ = ["RoomView", "StaleRoomView", "check_view", "reads_room_row"]
