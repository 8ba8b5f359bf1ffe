"""The NATS adapter of the pipeline's `FederationClient` port (DESIGN §2 step 4).

Each method is one request/reply on `<prefix>.<verb>` with a timeout. What comes back is
handed to the gap filler unchecked (it checks every PDU before use), but the envelope is held
to its Struct here: an answer that does not decode is a peer's garbage and counts as "could
not be had", never as an exception that would retry the input forever.

    no responders, timeout, connection trouble  -> RetryableError (the bus naks, with back-off)
    error_code "not_found"                      -> empty answer (the gap cannot be filled)
    any other error_code                        -> RetryableError (the service could not ask)
    undecodable envelope, or PDUs that are not
    JSON objects                                -> empty answer, logged
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from worker.errors import RetryableError
from worker.messages.federation import (
    NOT_FOUND,
    EventAuthRequest,
    EventAuthResponse,
    EventRequest,
    EventResponse,
    GetMissingEventsRequest,
    MissingEventsResponse,
    StateIdsRequest,
    StateIdsResponse,
    StateRequest,
    StateResponse,
)
from worker.observability.metrics import FEDERATION_FETCH_SECONDS, FEDERATION_REQUESTS

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=msgspec.Struct)
Pdu = Mapping[str, object]

_ENCODER = msgspec.json.Encoder()
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t)
    for t in (
        MissingEventsResponse,
        StateIdsResponse,
        StateResponse,
        EventResponse,
        EventAuthResponse,
    )
}


class FederationUnavailable(RetryableError):
    """The federation service did not answer, or said it could not ask the room's servers."""

    code = "federation_unavailable"


class NatsFederationClient:
    """Implements `worker.pipeline.ports.FederationClient` over NATS request/reply."""

    def __init__(
        self,
        nc: NATS,
        prefix: str = "federation.request",
        *,
        timeout: float = 10.0,
        state_timeout: float = 60.0,
        max_events: int = 50_000,
    ) -> None:
        """`state_timeout` is for `state` and `state_ids`, whose answers may be megabytes;
        an answer with more than `max_events` PDUs or IDs is refused as oversize."""
        self.nc = nc
        self.prefix = prefix
        self.timeout = timeout
        self.state_timeout = state_timeout
        self.max_events = max_events

    async def event_auth(self, room_id: str, event_id: str) -> list[Pdu]:
        req = EventAuthRequest(room_id=room_id, event_id=event_id)
        resp = await self._ask("event_auth", req, EventAuthResponse, self.timeout)
        return self._pdus("event_auth", resp.auth_chain) if resp is not None else []

    async def missing_events(
        self, room_id: str, earliest: Sequence[str], latest: Sequence[str], limit: int
    ) -> list[Pdu]:
        req = GetMissingEventsRequest(
            room_id=room_id,
            earliest_events=tuple(earliest),
            latest_events=tuple(latest),
            limit=limit,
        )
        resp = await self._ask("get_missing_events", req, MissingEventsResponse, self.timeout)
        if resp is None:
            return []
        if len(resp.events) > limit:
            # More than asked for is not an answer to our question.
            self._garbage("get_missing_events", f"{len(resp.events)} events, limit {limit}")
            return []
        return self._pdus("get_missing_events", resp.events)

    async def state_ids(
        self, room_id: str, event_id: str, *, origin: str = ""
    ) -> tuple[list[str], list[str]]:
        req = StateIdsRequest(room_id=room_id, event_id=event_id, origin=origin)
        resp = await self._ask("state_ids", req, StateIdsResponse, self.state_timeout)
        if resp is None:
            return [], []
        if len(resp.pdu_ids) + len(resp.auth_chain_ids) > self.max_events:
            self._garbage("state_ids", "oversize answer")
            return [], []
        return list(resp.pdu_ids), list(resp.auth_chain_ids)

    async def state(
        self, room_id: str, event_id: str, *, origin: str = ""
    ) -> tuple[list[Pdu], list[Pdu]]:
        req = StateRequest(room_id=room_id, event_id=event_id, origin=origin)
        resp = await self._ask("state", req, StateResponse, self.state_timeout)
        if resp is None:
            return [], []
        pdus = self._pdus("state", resp.pdus)
        chain = self._pdus("state", resp.auth_chain)
        if (not pdus and resp.pdus) or (not chain and resp.auth_chain):
            return [], []
        return pdus, chain

    async def event(self, room_id: str, event_id: str, *, origin: str = "") -> Pdu | None:
        req = EventRequest(room_id=room_id, event_id=event_id, origin=origin)
        resp = await self._ask("event", req, EventResponse, self.timeout)
        if resp is None or len(resp.pdus) != 1:
            return None
        pdus = self._pdus("event", resp.pdus)
        return pdus[0] if pdus else None

    async def _ask(
        self, verb: str, req: msgspec.Struct, resp_type: type[R], timeout: float
    ) -> R | None:
        """One request; the decoded answer, None for "could not be had"."""
        subject = f"{self.prefix}.{verb}"
        start = time.perf_counter()
        try:
            msg = await self.nc.request(subject, _ENCODER.encode(req), timeout=timeout)
        except NoRespondersError as exc:
            self._count(verb, "no_responders", start)
            raise FederationUnavailable(f"no federation service answers on {subject}") from exc
        except NatsTimeoutError as exc:
            self._count(verb, "timeout", start)
            raise FederationUnavailable(
                f"the federation service did not answer {verb} within {timeout:g} s"
            ) from exc
        except NatsError as exc:
            self._count(verb, "nats_error", start)
            raise FederationUnavailable(f"{verb} request failed: {exc!r}") from exc
        try:
            resp: R = _DECODERS[resp_type].decode(msg.data)
        except msgspec.DecodeError as exc:
            self._count(verb, "garbage", start)
            self._garbage(verb, f"undecodable answer: {exc}")
            return None
        code = getattr(resp, "error_code", "")
        if code == NOT_FOUND:
            self._count(verb, "not_found", start)
            return None
        if code:
            self._count(verb, "error", start)
            raise FederationUnavailable(
                f"the federation service could not {verb}: {code}: {getattr(resp, 'error', '')}"
            )
        self._count(verb, "ok", start)
        return resp

    def _pdus(self, verb: str, raws: Sequence[msgspec.Raw]) -> list[Pdu]:
        """The PDUs as JSON objects; none at all if any is not one (a garbled answer)."""
        if len(raws) > self.max_events:
            self._garbage(verb, f"oversize answer: {len(raws)} events")
            return []
        out: list[Pdu] = []
        for raw in raws:
            try:
                pdu = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                pdu = None
            if not isinstance(pdu, dict):
                self._garbage(verb, "a PDU that is not a JSON object")
                return []
            out.append(pdu)
        return out

    @staticmethod
    def _garbage(verb: str, why: str) -> None:
        log.warning("federation_garbage", verb=verb, reason=why)

    @staticmethod
    def _count(verb: str, result: str, start: float) -> None:
        FEDERATION_REQUESTS.labels(verb, result).inc()
        FEDERATION_FETCH_SECONDS.labels(verb).observe(time.perf_counter() - start)
