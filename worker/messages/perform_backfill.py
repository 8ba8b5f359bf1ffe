"""The `backfill` perform (DESIGN §4 Perform API): history before some events of a room.

Kept beside `worker.messages.perform` and registered in its `PERFORMS`; changes are additive.
"""

from __future__ import annotations

import msgspec


class BackfillRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # Where to page back from: these events and those before them, newest first.
    event_ids: list[str]
    limit: int = 20
    # The server asking (the federation API answering /backfill): only events it may see
    # are returned. Empty: one of our users asks (a client paging back).
    server_name: str = ""


class BackfillResponse(msgspec.Struct, frozen=True, kw_only=True):
    # At most `limit` events, newest first, each with its `event_id`.
    events: list[msgspec.Raw]


__all__ = ["BackfillRequest", "BackfillResponse"]
