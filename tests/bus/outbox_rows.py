"""Outbox rows written as the store writes them: by the outbox arm of `FINISH_EVENT`."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from worker.pipeline.ports import OutputRecord
from worker.storage.finish import FINISH_EVENT


async def insert_outputs(
    conn: asyncpg.Connection, room_id: str, outputs: Sequence[OutputRecord]
) -> None:
    """The outputs of one write, in order, inside the caller's transaction. Room NID 0 names
    no room: the statement's other arms have nothing to change."""
    await conn.execute(
        FINISH_EVENT,
        0, False, 0, None, "{}", [], [], [],
        [o.output_id for o in outputs],
        [o.output_type for o in outputs],
        [o.payload for o in outputs],
        room_id, None, None,
    )
