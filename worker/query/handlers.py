"""The query handlers: plain async functions from a request Struct to a response Struct.

Each takes the narrow `QueryStore` port (worker.query.ports) and a decoded request, and either
returns the response or raises `QueryFailed` with a stable code of the micro service's
vocabulary (`worker.messages.errors`: `bad_request`, `not_found`, `internal`). They hold no locks and never touch the input pipeline: every read is a
snapshot read through the store, so a query cannot hold up event processing of any room.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from worker.core import redaction
from worker.core.events import MEMBER, Event, StateKey
from worker.core.stateres import resolve
from worker.core.versions import RoomRules, rules_for
from worker.messages import query as m
from worker.query.ports import (
    WILDCARD,
    OutlierMemberships,
    QueryEvent,
    QueryStore,
    StateFilter,
)
from worker.query.visibility import (
    HISTORY_VISIBILITY,
    history_visibility,
    member_keys_of_server,
    server_may_see,
)

# Bounds that keep one request from asking for unbounded work.
MAX_EVENT_IDS = 10_000
MAX_MISSING_EVENTS_LIMIT = 1_000


class QueryFailed(Exception):
    """A query that cannot be answered; `code` is one of `worker.messages.errors.ERROR_CODES`."""

    def __init__(self, code: m.QueryErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: m.QueryErrorCode = code
        self.message = message


# --- shared helpers ---------------------------------------------------------------------------


def _check_ids(name: str, ids: Sequence[str]) -> None:
    if len(ids) > MAX_EVENT_IDS:
        raise QueryFailed("bad_request", f"{name}: at most {MAX_EVENT_IDS} event IDs")
    for i in ids:
        if not i:
            raise QueryFailed("bad_request", f"{name}: empty event ID")


def _check_tuples(tuples: Sequence[StateKey] | None) -> StateFilter:
    if tuples is None:
        return None
    for t, _ in tuples:
        if not t:
            raise QueryFailed("bad_request", "state_tuples: empty event type")
    return list(tuples)


def _need(value: str, name: str) -> None:
    if not value:
        raise QueryFailed("bad_request", f"{name} is required")


def _some_known(name: str, asked: Sequence[str], known: Iterable[str]) -> None:
    """Not-found when none of the asked events is known: an empty success would read as an
    answer. With some known, the answer lists the others in `missing_event_ids`."""
    if asked and not any(True for _ in known):
        raise QueryFailed("not_found", f"{name}: no known event among {sorted(set(asked))}")


async def _version(store: QueryStore, room_id: str) -> tuple[str, RoomRules]:
    _need(room_id, "room_id")
    version = await store.room_version(room_id)
    if version is None:
        raise QueryFailed("not_found", f"unknown room {room_id}")
    rules = rules_for(version)
    if rules is None:
        # Stored rooms always have a known version; this is corrupt data, not a bad request.
        raise QueryFailed("internal", f"room {room_id} has unknown version {version}")
    return version, rules


def filter_state(state: Mapping[StateKey, str], keys: StateFilter) -> dict[StateKey, str]:
    """`state` restricted to the filter (`*` state key = every key of the type)."""
    if keys is None:
        return dict(state)
    exact = {k for k in keys if k[1] != WILDCARD}
    types = {k[0] for k in keys if k[1] == WILDCARD}
    return {k: v for k, v in state.items() if k in exact or k[0] in types}


def _sorted_json(state: Mapping[StateKey, str], events: Mapping[str, QueryEvent]) -> list[msgspec.Raw]:
    """The state's events as JSON, sorted by (type, state_key); unstored ones skipped."""
    out = []
    for key in sorted(state):
        ev = events.get(state[key])
        if ev is not None:
            out.append(msgspec.Raw(ev.json))
    return out


def _membership(ev: QueryEvent) -> str | None:
    """The membership of a member event, from the store's column when it has one."""
    return ev.membership or ev.event.membership


def _by_depth(events: Iterable[QueryEvent]) -> list[msgspec.Raw]:
    ordered = sorted(events, key=lambda e: (e.depth, e.event_id))
    return [msgspec.Raw(e.json) for e in ordered]


async def _state_events(store: QueryStore, state: Mapping[StateKey, str]) -> list[msgspec.Raw]:
    events = await store.events(sorted(set(state.values())))
    return _sorted_json(state, events)


async def _known_with_state(
    store: QueryStore, room_id: str, event_ids: Sequence[str]
) -> tuple[dict[str, QueryEvent], list[str]]:
    """The events of the room among `event_ids` that have state, and the others (sorted)."""
    found = await store.events(event_ids)
    ok = {
        i: e for i, e in found.items() if e.room_id == room_id and e.has_state
    }
    missing = sorted({i for i in event_ids if i not in ok})
    return ok, missing


async def state_after(
    store: QueryStore, rules: RoomRules, event_ids: Sequence[str], keys: StateFilter
) -> dict[StateKey, str]:
    """State after the events (all known, all with state), resolved when there are several.

    Resolution needs whole states, so the filter is applied afterwards; with one event (or
    several that agree) the store filters for us.
    """
    unique = sorted(set(event_ids))
    if len(unique) == 1:
        return (await store.state_after(unique, keys)).get(unique[0], {})
    full = await store.state_after(unique, None)
    state_sets = [full.get(i, {}) for i in unique]
    first = state_sets[0]
    if all(s == first for s in state_sets[1:]):
        return filter_state(first, keys)
    resolved = await _resolve(store, rules, state_sets)
    return filter_state(resolved, keys)


async def _resolve(
    store: QueryStore, rules: RoomRules, state_sets: list[dict[StateKey, str]]
) -> dict[StateKey, str]:
    """Resolve forked states: load every event the algorithm may read, then run it off-loop.

    The algorithm walks auth chains through the lookup, so the chains of every state event are
    loaded up front in one batch (the core is synchronous and cannot call the store).
    """
    ids = sorted({i for s in state_sets for i in s.values()})
    chain = await store.auth_chain(ids)
    loaded = await store.events(sorted(set(ids) | chain))

    def run() -> dict[StateKey, str]:
        # Parsing thousands of events and resolving are CPU-heavy on big rooms: in a thread,
        # so the loop (the pipeline's other rooms, heartbeats, other queries) keeps moving
        # (DESIGN §5).
        views: dict[str, Event] = {i: e.event for i, e in loaded.items()}
        rejected = frozenset(i for i, e in loaded.items() if e.rejected)
        resolved, _stats = resolve(rules, state_sets, views.get, None, rejected)
        return dict(resolved)

    return await asyncio.to_thread(run)


# --- the endpoints ----------------------------------------------------------------------------


async def latest_events_and_state(
    store: QueryStore, req: m.LatestEventsAndStateRequest
) -> m.LatestEventsAndStateResponse:
    version, _ = await _version(store, req.room_id)
    keys = _check_tuples(req.state_tuples)
    latest = sorted(await store.extremities(req.room_id))
    state = await store.current_state(req.room_id, keys) if keys != [] else {}
    events = await store.events(sorted(set(latest) | set(state.values())))
    depth = max((events[i].depth for i in latest if i in events), default=0) + 1
    return m.LatestEventsAndStateResponse(
        room_id=req.room_id,
        room_version=version,
        latest_event_ids=latest,
        depth=depth,
        state_events=_sorted_json(state, events),
    )


async def state_after_events(
    store: QueryStore, req: m.StateAfterEventsRequest
) -> m.StateAfterEventsResponse:
    version, rules = await _version(store, req.room_id)
    keys = _check_tuples(req.state_tuples)
    _check_ids("prev_event_ids", req.prev_event_ids)
    if not req.prev_event_ids:
        raise QueryFailed("bad_request", "prev_event_ids must not be empty")
    _, missing = await _known_with_state(store, req.room_id, req.prev_event_ids)
    if missing:
        return m.StateAfterEventsResponse(
            room_id=req.room_id,
            room_version=version,
            prev_events_exist=False,
            missing_event_ids=missing,
        )
    state = await state_after(store, rules, req.prev_event_ids, keys)
    return m.StateAfterEventsResponse(
        room_id=req.room_id,
        room_version=version,
        prev_events_exist=True,
        state_events=await _state_events(store, state),
    )


async def events_by_id(store: QueryStore, req: m.EventsByIdRequest) -> m.EventsByIdResponse:
    _check_ids("event_ids", req.event_ids)
    if req.room_id:
        await _version(store, req.room_id)
    found = await store.events(req.event_ids)
    events: list[msgspec.Raw] = []
    missing: list[str] = []
    seen: set[str] = set()
    for i in req.event_ids:
        if i in seen:
            continue
        seen.add(i)
        ev = found.get(i)
        if ev is None or (req.room_id and ev.room_id != req.room_id):
            missing.append(i)
        else:
            events.append(msgspec.Raw(ev.json))
    return m.EventsByIdResponse(events=events, missing_event_ids=missing)


async def current_state(store: QueryStore, req: m.CurrentStateRequest) -> m.CurrentStateResponse:
    version, _ = await _version(store, req.room_id)
    keys = _check_tuples(req.state_tuples)
    state = await store.current_state(req.room_id, keys) if keys else {}
    return m.CurrentStateResponse(
        room_id=req.room_id,
        room_version=version,
        state_events=await _state_events(store, state),
    )


async def membership_for_user(
    store: QueryStore, req: m.MembershipForUserRequest
) -> m.MembershipForUserResponse:
    await _version(store, req.room_id)
    _need(req.user_id, "user_id")
    key = (MEMBER, req.user_id)
    state = await store.current_state(req.room_id, [key])
    event_id = state.get(key, "")
    if not event_id and isinstance(store, OutlierMemberships):
        # A room held only through an invite: no state, the invite (or its rejection) says.
        pending = await store.outlier_membership(req.room_id, req.user_id)
        if pending is not None:
            return m.MembershipForUserResponse(
                room_id=req.room_id, membership=pending.membership, event_id=pending.event_id,
                is_in_room=False, has_been_in_room=False,
            )
    membership = "leave"
    if event_id:
        found = await store.events([event_id])
        if event_id in found:
            membership = _membership(found[event_id]) or "leave"
    joined = membership == "join"
    ever = joined or await store.ever_joined(req.room_id, req.user_id)
    return m.MembershipForUserResponse(
        room_id=req.room_id,
        membership=membership,
        event_id=event_id,
        is_in_room=joined,
        has_been_in_room=ever,
    )


async def memberships_for_room(
    store: QueryStore, req: m.MembershipsForRoomRequest
) -> m.MembershipsForRoomResponse:
    await _version(store, req.room_id)
    state = await store.current_state(req.room_id, [(MEMBER, WILDCARD)])
    found = await store.events(sorted(set(state.values())))
    out = []
    for key in sorted(state):
        ev = found.get(state[key])
        if ev is None:
            continue
        if req.joined_only and _membership(ev) != "join":
            continue
        out.append(msgspec.Raw(ev.json))
    return m.MembershipsForRoomResponse(room_id=req.room_id, events=out)


async def membership_at_event(
    store: QueryStore, req: m.MembershipAtEventRequest
) -> m.MembershipAtEventResponse:
    await _version(store, req.room_id)
    _need(req.user_id, "user_id")
    _check_ids("event_ids", req.event_ids)
    known, missing = await _known_with_state(store, req.room_id, req.event_ids)
    _some_known("event_ids", req.event_ids, known)
    key = (MEMBER, req.user_id)
    before = await store.state_before(sorted(known), [key])
    member_ids = sorted({s[key] for s in before.values() if key in s})
    members = await store.events(member_ids)
    out = []
    for i in sorted(known):
        mid = before.get(i, {}).get(key, "")
        ev = members.get(mid)
        membership = (_membership(ev) if ev is not None else None) or "leave"
        out.append(m.MembershipAt(event_id=i, membership=membership, membership_event_id=mid))
    return m.MembershipAtEventResponse(
        room_id=req.room_id, memberships=out, missing_event_ids=missing
    )


async def room_version(store: QueryStore, req: m.RoomVersionRequest) -> m.RoomVersionResponse:
    version, _ = await _version(store, req.room_id)
    return m.RoomVersionResponse(room_id=req.room_id, room_version=version)


async def state_and_auth_chain(
    store: QueryStore, req: m.StateAndAuthChainRequest
) -> m.StateAndAuthChainResponse:
    version, rules = await _version(store, req.room_id)
    _check_ids("prev_event_ids", req.prev_event_ids)
    _check_ids("auth_event_ids", req.auth_event_ids)
    if req.only_auth_chain:
        found = await store.events(sorted(set(req.prev_event_ids) | set(req.auth_event_ids)))
        missing = sorted(i for i in set(req.prev_event_ids) | set(req.auth_event_ids) if i not in found)
        chain = await store.auth_chain(sorted(found))
        chain |= {i for i in req.auth_event_ids if i in found}
        return m.StateAndAuthChainResponse(
            room_id=req.room_id,
            room_version=version,
            state_known=False,
            missing_event_ids=missing,
            auth_chain_events=_by_depth((await store.events(sorted(chain))).values()),
        )
    if not req.prev_event_ids:
        raise QueryFailed("bad_request", "prev_event_ids must not be empty")
    if req.state_before and len(set(req.prev_event_ids)) != 1:
        raise QueryFailed("bad_request", "state_before needs exactly one event in prev_event_ids")
    _, missing = await _known_with_state(store, req.room_id, req.prev_event_ids)
    if missing:
        return m.StateAndAuthChainResponse(
            room_id=req.room_id, room_version=version, state_known=False, missing_event_ids=missing
        )
    if req.state_before:
        [event_id] = set(req.prev_event_ids)
        state = (await store.state_before([event_id], None)).get(event_id, {})
    else:
        state = await state_after(store, rules, req.prev_event_ids, None)
    auth_found = await store.events(req.auth_event_ids)
    roots = sorted(set(state.values()) | set(auth_found))
    chain = await store.auth_chain(roots) | set(auth_found)
    loaded = await store.events(sorted(chain | set(state.values())))
    return m.StateAndAuthChainResponse(
        room_id=req.room_id,
        room_version=version,
        state_known=True,
        missing_event_ids=sorted(i for i in req.auth_event_ids if i not in auth_found),
        state_events=_sorted_json(state, loaded),
        auth_chain_events=_by_depth(loaded[i] for i in sorted(chain) if i in loaded),
    )


async def auth_chain(store: QueryStore, req: m.AuthChainRequest) -> m.AuthChainResponse:
    _check_ids("event_ids", req.event_ids)
    found = await store.events(req.event_ids)
    _some_known("event_ids", req.event_ids, found)
    missing = sorted({i for i in req.event_ids if i not in found})
    chain = await store.auth_chain(sorted(found))
    loaded = await store.events(sorted(chain))
    return m.AuthChainResponse(
        auth_chain_events=_by_depth(loaded.values()), missing_event_ids=missing
    )


async def _allowed(
    store: QueryStore, server_name: str, event_ids: Sequence[str]
) -> dict[str, bool]:
    """For each event with state: may `server_name` see it? Events without state are absent.

    Only the history visibility and the member entries of that server are loaded, so the cost
    does not grow with the room's other members.
    """
    states = await store.state_after(event_ids, [HISTORY_VISIBILITY, (MEMBER, WILDCARD)])
    wanted: dict[str, tuple[str, list[StateKey]]] = {}
    for i, state in states.items():
        wanted[i] = (state.get(HISTORY_VISIBILITY, ""), member_keys_of_server(state, server_name))
    need = {hv for hv, _ in wanted.values() if hv} | {
        states[i][k] for i, (_, keys) in wanted.items() for k in keys
    }
    loaded = await store.events(sorted(need))
    out = {}
    for i, (hv, keys) in wanted.items():
        hv_event = loaded.get(hv)
        members = {k: loaded[states[i][k]].event for k in keys if states[i][k] in loaded}
        out[i] = server_may_see(
            history_visibility(hv_event.event if hv_event else None), members
        )
    return out


async def server_allowed_to_see_event(
    store: QueryStore, req: m.ServerAllowedToSeeEventRequest
) -> m.ServerAllowedToSeeEventResponse:
    _need(req.event_id, "event_id")
    _need(req.server_name, "server_name")
    if req.room_id:
        await _version(store, req.room_id)
    found = await store.events([req.event_id])
    ev = found.get(req.event_id)
    if ev is None or (req.room_id and ev.room_id != req.room_id):
        raise QueryFailed("not_found", f"unknown event {req.event_id}")
    # An event whose state we do not know (an outlier) cannot be shown to be visible.
    allowed = (await _allowed(store, req.server_name, [req.event_id])).get(req.event_id, False)
    return m.ServerAllowedToSeeEventResponse(allowed=allowed)


async def missing_events(
    store: QueryStore, req: m.MissingEventsRequest
) -> m.MissingEventsResponse:
    """Walk back from `latest_events` through prev_events, newest first, until `earliest_events`.

    The order of the walk follows Synapse's `get_missing_events`: a queue by depth (deepest
    first), so that with a small limit the events nearest to `latest_events` are returned.
    Events the asking server may not see are returned redacted, which keeps the DAG walkable.
    """
    _, rules = await _version(store, req.room_id)
    _need(req.server_name, "server_name")
    _check_ids("earliest_events", req.earliest_events)
    _check_ids("latest_events", req.latest_events)
    if not 0 <= req.limit <= MAX_MISSING_EVENTS_LIMIT:
        raise QueryFailed("bad_request", f"limit must be within 0..{MAX_MISSING_EVENTS_LIMIT}")
    seen: set[str] = set(req.earliest_events) | set(req.latest_events)
    latest = await store.events(req.latest_events)
    _some_known(
        "latest_events", req.latest_events, (i for i, e in latest.items() if e.room_id == req.room_id)
    )
    heap: list[tuple[int, str]] = []
    loaded: dict[str, QueryEvent] = {}

    async def push(ids: Iterable[str]) -> None:
        fresh = sorted({i for i in ids if i not in seen})
        seen.update(fresh)
        found = await store.events(fresh) if fresh else {}
        for i, ev in found.items():
            if ev.room_id == req.room_id:
                loaded[i] = ev
                heapq.heappush(heap, (-ev.depth, i))

    await push(
        p for e in latest.values() if e.room_id == req.room_id for p in e.event.prev_event_ids
    )
    result: list[QueryEvent] = []
    while heap and len(result) < req.limit:
        _, i = heapq.heappop(heap)
        ev = loaded[i]
        if ev.depth < req.min_depth:
            continue
        result.append(ev)
        await push(ev.event.prev_event_ids)
    allowed = await _allowed(store, req.server_name, [e.event_id for e in result])
    out: list[msgspec.Raw] = []
    for ev in sorted(result, key=lambda e: (e.depth, e.event_id)):
        if allowed.get(ev.event_id, False):
            out.append(msgspec.Raw(ev.json))
        else:
            pdu = redaction.redact(ev.event.pdu, rules)
            pdu.setdefault("event_id", ev.event_id)
            out.append(msgspec.Raw(msgspec.json.encode(pdu)))
    return m.MissingEventsResponse(events=out)


async def server_joined_to_room(
    store: QueryStore, req: m.ServerJoinedToRoomRequest
) -> m.ServerJoinedToRoomResponse:
    await _version(store, req.room_id)
    _need(req.server_name, "server_name")
    # Asked by federation on every inbound request: one read of the membership rows, without
    # loading member events.
    joined = await store.server_joined(req.room_id, req.server_name)
    return m.ServerJoinedToRoomResponse(room_id=req.room_id, is_joined=joined)


Handler = Callable[[QueryStore, Any], Awaitable[msgspec.Struct]]

# Endpoint name -> handler; the names are those of `worker.messages.query.QUERIES`.
HANDLERS: dict[str, Handler] = {
    "latest_events_and_state": latest_events_and_state,
    "state_after_events": state_after_events,
    "events_by_id": events_by_id,
    "current_state": current_state,
    "membership_for_user": membership_for_user,
    "memberships_for_room": memberships_for_room,
    "membership_at_event": membership_at_event,
    "room_version": room_version,
    "state_and_auth_chain": state_and_auth_chain,
    "auth_chain": auth_chain,
    "missing_events": missing_events,
    "server_allowed_to_see_event": server_allowed_to_see_event,
    "server_joined_to_room": server_joined_to_room,
}


async def answer(store: QueryStore, name: str, data: bytes) -> msgspec.Struct:
    """Decode a request body, run its handler, return the response; raises `QueryFailed`.

    Shared by the NATS service and by callers that want a query without NATS.
    """
    request_type, _ = m.QUERIES[name]
    try:
        request = msgspec.json.decode(data or b"{}", type=request_type)
    except msgspec.ValidationError as exc:
        raise QueryFailed("bad_request", f"invalid {name} request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise QueryFailed("bad_request", f"request is not JSON: {exc}") from None
    return await HANDLERS[name](store, request)
