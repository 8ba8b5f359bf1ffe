"""The admin performs that purge (DESIGN §3 "Lifecycle", §4): `purge_room` and
`purge_history`, served on `<prefix>.perform.<name>` beside the queries.

The purges themselves are the storage adapter's (`worker.storage.purge`), behind the narrow
`Purger` port below; this module decodes requests, checks them, maps refusals to the stable
error codes and, once a purge has committed, tells the worker (`on_purged`: publish the
`purge_room` output now rather than at the relay's next sweep, and have every worker's
caches forget the room).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import msgspec

from worker.errors import RequestRefused
from worker.messages import admin as m
from worker.messages.errors import ErrorCode


class PurgeRefused(Exception):
    """A purge that cannot be done as asked; `code` is the storage's reason (`unknown_room`
    or `unknown_event`), both answered `not_found` (`_ANSWERED`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AdminFailed(RequestRefused):
    """A perform that cannot be answered; `code` is one of `worker.messages.errors.ERROR_CODES`."""


# A purge's refusal -> the micro service's code (anything else would be a bug: `internal`).
_ANSWERED: dict[str, ErrorCode] = {"unknown_room": "not_found", "unknown_event": "not_found"}


class Removed(Protocol):
    @property
    def rows(self) -> Mapping[str, int]: ...

    @property
    def bytes(self) -> Mapping[str, int]: ...


class HistoryPurged(Protocol):
    @property
    def removed(self) -> Removed: ...

    @property
    def remaining(self) -> int: ...

    @property
    def kept_for_state(self) -> int: ...


class Purger(Protocol):
    async def purge_room(self, room_id: str) -> Removed: ...

    async def purge_history(
        self,
        room_id: str,
        *,
        before_ts: int | None = None,
        before_event_id: str | None = None,
        limit: int | None = None,
    ) -> HistoryPurged: ...


OnPurged = Callable[[str], Awaitable[None]]


class AdminPerforms:
    """Answers the admin performs by name (`answer`), for the micro service."""

    def __init__(self, purger: Purger, on_purged: OnPurged) -> None:
        self._purger = purger
        self._on_purged = on_purged

    @property
    def names(self) -> list[str]:
        return list(m.PURGE_PERFORMS)

    async def answer(self, name: str, data: bytes) -> msgspec.Struct:
        request_type, _ = m.PURGE_PERFORMS[name]
        try:
            request = msgspec.json.decode(data or b"{}", type=request_type)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise AdminFailed("bad_request", f"invalid {name} request: {exc}") from None
        try:
            if isinstance(request, m.PurgeRoomRequest):
                return await self.purge_room(request)
            assert isinstance(request, m.PurgeHistoryRequest)
            return await self.purge_history(request)
        except PurgeRefused as exc:
            raise AdminFailed(_ANSWERED.get(exc.code, "internal"), exc.message) from None

    async def purge_room(self, request: m.PurgeRoomRequest) -> m.PurgeRoomResponse:
        removed = await self._purger.purge_room(request.room_id)
        await self._on_purged(request.room_id)
        return m.PurgeRoomResponse(room_id=request.room_id, removed=dict(removed.rows),
                                   removed_bytes=dict(removed.bytes))

    async def purge_history(self, request: m.PurgeHistoryRequest) -> m.PurgeHistoryResponse:
        if (request.before_ts is None) == (request.before_event_id is None):
            raise AdminFailed("bad_request", "give exactly one of before_ts and before_event_id")
        if request.limit is not None and request.limit < 1:
            raise AdminFailed("bad_request", "limit must be at least 1")
        done = await self._purger.purge_history(
            request.room_id, before_ts=request.before_ts,
            before_event_id=request.before_event_id, limit=request.limit,
        )
        await self._on_purged(request.room_id)
        return m.PurgeHistoryResponse(
            room_id=request.room_id, removed=dict(done.removed.rows),
            removed_bytes=dict(done.removed.bytes), remaining=done.remaining,
            kept_for_state=done.kept_for_state,
        )
