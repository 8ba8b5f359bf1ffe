"""The NATS adapter of the performs' federation port: `make_join`, `send_join`, `make_leave`,
`send_leave`, `invite`, `backfill`, `query_directory` on `<prefix>.<verb>` (DESIGN §4).

Unlike gap filling, a perform asks one named server at a time and moves on to the next when
one fails, so every failure is a value here (`Unanswered`, with the reason to report), never
an exception: no responders, a timeout, an `error_code` or an undecodable answer all say
"this server did not give us an answer"; the caller decides whether another server is worth
asking. The one exception is `query_directory`'s `not_found`: the alias's own server
answered that it names no room, which is an answer, returned as it is.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from worker.messages.federation_perform import (
    FEDERATION_PERFORM_VERBS,
    BackfillRequest,
    BackfillResponse,
    InviteRequest,
    InviteResponse,
    MakeJoinRequest,
    MakeJoinResponse,
    MakeLeaveRequest,
    MakeLeaveResponse,
    QueryDirectoryRequest,
    QueryDirectoryResponse,
    SendJoinRequest,
    SendJoinResponse,
    SendLeaveRequest,
    SendLeaveResponse,
)
from worker.observability.metrics import FEDERATION_FETCH_SECONDS, FEDERATION_REQUESTS
from worker.perform.ports import Unanswered

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=msgspec.Struct)

_ENCODER = msgspec.json.Encoder()
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    response: msgspec.json.Decoder(response) for _, response in FEDERATION_PERFORM_VERBS.values()
}


class NatsFederationPerformClient:
    """Implements `worker.perform.remote.RemoteFederation` over NATS request/reply."""

    def __init__(
        self,
        nc: NATS,
        prefix: str = "federation.request",
        *,
        timeout: float = 10.0,
        join_timeout: float = 120.0,
    ) -> None:
        """`join_timeout` is for `send_join`, whose answer is a whole room's state."""
        self.nc = nc
        self.prefix = prefix
        self.timeout = timeout
        self.join_timeout = join_timeout

    async def make_join(
        self, destination: str, room_id: str, user_id: str, versions: tuple[str, ...]
    ) -> MakeJoinResponse | Unanswered:
        req = MakeJoinRequest(
            destination=destination, room_id=room_id, user_id=user_id, supported_versions=versions
        )
        return await self._ask("make_join", req, MakeJoinResponse, self.timeout)

    async def send_join(
        self, destination: str, room_id: str, event_id: str, event: bytes
    ) -> SendJoinResponse | Unanswered:
        req = SendJoinRequest(
            destination=destination, room_id=room_id, event_id=event_id, event=msgspec.Raw(event)
        )
        return await self._ask("send_join", req, SendJoinResponse, self.join_timeout)

    async def make_leave(
        self, destination: str, room_id: str, user_id: str
    ) -> MakeLeaveResponse | Unanswered:
        req = MakeLeaveRequest(destination=destination, room_id=room_id, user_id=user_id)
        return await self._ask("make_leave", req, MakeLeaveResponse, self.timeout)

    async def send_leave(
        self, destination: str, room_id: str, event_id: str, event: bytes
    ) -> SendLeaveResponse | Unanswered:
        req = SendLeaveRequest(
            destination=destination, room_id=room_id, event_id=event_id, event=msgspec.Raw(event)
        )
        return await self._ask("send_leave", req, SendLeaveResponse, self.timeout)

    async def invite(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        room_version: str,
        event: bytes,
        invite_room_state: tuple[bytes, ...],
    ) -> InviteResponse | Unanswered:
        req = InviteRequest(
            destination=destination,
            room_id=room_id,
            event_id=event_id,
            room_version=room_version,
            event=msgspec.Raw(event),
            invite_room_state=tuple(msgspec.Raw(s) for s in invite_room_state),
        )
        return await self._ask("invite", req, InviteResponse, self.timeout)

    async def backfill(
        self, destination: str, room_id: str, event_ids: tuple[str, ...], limit: int
    ) -> BackfillResponse | Unanswered:
        req = BackfillRequest(
            destination=destination, room_id=room_id, event_ids=event_ids, limit=limit
        )
        return await self._ask("backfill", req, BackfillResponse, self.join_timeout)

    async def query_directory(
        self, destination: str, room_alias: str
    ) -> QueryDirectoryResponse | Unanswered:
        req = QueryDirectoryRequest(destination=destination, room_alias=room_alias)
        return await self._ask(
            "query_directory", req, QueryDirectoryResponse, self.timeout, answers=("not_found",)
        )

    async def _ask(
        self, verb: str, req: Any, resp_type: type[R], timeout: float,
        answers: tuple[str, ...] = (),
    ) -> R | Unanswered:
        """The answer; `answers`: error codes that are answers, returned as they are."""
        destination: str = req.destination
        subject = f"{self.prefix}.{verb}"
        start = time.perf_counter()
        try:
            msg = await self.nc.request(subject, _ENCODER.encode(req), timeout=timeout)
        except NoRespondersError:
            return self._fail(verb, destination, "no_responders", start,
                              f"no federation service answers on {subject}")
        except NatsTimeoutError:
            return self._fail(verb, destination, "timeout", start,
                              f"no answer to {verb} within {timeout:g} s")
        except NatsError as exc:
            return self._fail(verb, destination, "nats_error", start, f"{verb} failed: {exc!r}")
        try:
            resp: R = _DECODERS[resp_type].decode(msg.data)
        except msgspec.DecodeError as exc:
            return self._fail(verb, destination, "garbage", start,
                              f"undecodable {verb} answer: {exc}")
        code = getattr(resp, "error_code", "")
        if code and code not in answers:
            return self._fail(verb, destination, "error", start,
                              f"{verb} refused: {code}: {getattr(resp, 'error', '')}")
        FEDERATION_REQUESTS.labels(verb, "ok").inc()
        FEDERATION_FETCH_SECONDS.labels(verb).observe(time.perf_counter() - start)
        return resp

    @staticmethod
    def _fail(verb: str, destination: str, result: str, start: float, why: str) -> Unanswered:
        FEDERATION_REQUESTS.labels(verb, result).inc()
        FEDERATION_FETCH_SECONDS.labels(verb).observe(time.perf_counter() - start)
        log.info("federation_unanswered", verb=verb, destination=destination, reason=why)
        return Unanswered(destination, why)


__all__ = ["NatsFederationPerformClient", "Unanswered"]
