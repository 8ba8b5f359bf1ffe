"""The remote paths of the performs `join`, `leave` and `invite` (DESIGN §4 Perform API).

- **join** of a room where no user of ours is: ask `make_join` of each server in turn, check
  the template, fill, hash and sign it, `send_join`, check the answer's state and auth chain
  (`worker.core.joins`), then store its events as outliers and submit the join as a `new`
  input with `state_event_ids` through the input stream. The events passed every check the
  pipeline makes of an outlier, so they are written in one transaction (`OutlierStore`)
  rather than sent one message each; the few the pipeline must store itself (see
  `worker.storage.outliers`) go through the input stream as `outlier` inputs, before the
  join. A server that fails or answers garbage is passed over for the next; nothing is
  stored before an answer passed every check, so a bad answer changes nothing here.
- **leave** of a room we only hold an invite for (rejecting it): `make_leave` / `send_leave`
  through the inviter's server (then the others given), then the leave is submitted as an
  `invite` input: stored beside the invite, it retires it (`retire_invite_event`).
- **invite** of a user of another server: the invitee's server countersigns our signed invite
  (`invite` verb, with the room's stripped state); the countersigned event is what we submit.

The ports are narrow (STYLE R4): the federation verbs, putting inputs on the stream, and
the bulk store of checked outliers.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog

from worker.core.auth import auth_types_for_event, check_auth, check_auth_event_list
from worker.core.auth.common import CREATE_KEY
from worker.core.events import Event, StateKey
from worker.core.format import parse_pdu
from worker.core.ids import domain_of
from worker.core.joins import (
    RoomSnapshot,
    check_event,
    check_room_events,
    check_template,
    fill_template,
    stripped_state,
)
from worker.core.outcomes import Rejection
from worker.core.signing import ServerKey, hash_and_sign
from worker.core.versions import ROOM_VERSIONS, RoomRules, rules_for
from worker.messages.federation_perform import (
    InviteResponse,
    MakeJoinResponse,
    MakeLeaveResponse,
    QueryDirectoryResponse,
    SendJoinResponse,
    SendLeaveResponse,
)
from worker.messages.input import InputRoomEvent
from worker.perform.ports import InputPort, PerformFailed, Unanswered

if TYPE_CHECKING:
    from worker.perform.backfill import Backfiller

log = structlog.get_logger(__name__)

# A send_join answer bigger than this is refused unread: the biggest public rooms have a few
# hundred thousand state and auth chain events together.
DEFAULT_MAX_STATE_EVENTS = 500_000
# Stripped state an invite carries (spec "Stripped state": the events a client shows before
# joining).
INVITE_STATE_KEYS: tuple[StateKey, ...] = (
    ("m.room.create", ""),
    ("m.room.join_rules", ""),
    ("m.room.name", ""),
    ("m.room.avatar", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.encryption", ""),
)
_OPAQUE = string.ascii_letters


class RemoteFederation(Protocol):
    """The federation verbs the remote paths ask (`NatsFederationPerformClient`)."""

    async def make_join(
        self, destination: str, room_id: str, user_id: str, versions: tuple[str, ...]
    ) -> MakeJoinResponse | Unanswered: ...

    async def send_join(
        self, destination: str, room_id: str, event_id: str, event: bytes
    ) -> SendJoinResponse | Unanswered: ...

    async def make_leave(
        self, destination: str, room_id: str, user_id: str
    ) -> MakeLeaveResponse | Unanswered: ...

    async def send_leave(
        self, destination: str, room_id: str, event_id: str, event: bytes
    ) -> SendLeaveResponse | Unanswered: ...

    async def invite(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        room_version: str,
        event: bytes,
        invite_room_state: tuple[bytes, ...],
    ) -> InviteResponse | Unanswered: ...

    async def query_directory(
        self, destination: str, room_alias: str
    ) -> QueryDirectoryResponse | Unanswered:
        """The alias's room and servers, or `error_code` `not_found` when its server says
        the alias names no room."""
        ...


class PendingInvite(Protocol):
    """A user's membership in a room known only through an invite (`worker.storage.invites`)."""

    @property
    def event_id(self) -> str: ...
    @property
    def membership(self) -> str: ...
    @property
    def room_version(self) -> str: ...
    @property
    def json(self) -> bytes:
        """The stored PDU."""
        ...


class InviteReads(Protocol):
    async def outlier_membership(self, room_id: str, user_id: str) -> PendingInvite | None:
        """The user's latest invite-kind member event in a room we hold no state of."""
        ...


class OutlierStore(Protocol):
    """Stores checked events as outliers in bulk (`worker.storage.outliers.PgOutlierStore`)."""

    async def store_outliers(
        self, room_id: str, room_version: str, events: Sequence[Event]
    ) -> list[str]:
        """Store `events`, checked as the pipeline checks outliers and in auth order, as the
        pipeline would store them, in one transaction; events stored already are skipped.
        Returns the IDs of the events the pipeline must store itself (it would store them
        otherwise than as a plain insert), in order, for the input stream."""
        ...



@dataclass(frozen=True, slots=True)
class _Joined:
    """What one server's answers gave, every check passed."""

    server: str
    rules: RoomRules
    snapshot: RoomSnapshot
    join: Event


def _unavailable(what: str, reasons: Sequence[str]) -> PerformFailed:
    return PerformFailed("unavailable", f"{what}: " + "; ".join(reasons) if reasons else what)


class RemotePerformer:
    """The remote performs of one server (its name and key)."""

    def __init__(
        self,
        federation: RemoteFederation,
        inputs: InputPort,
        key: ServerKey,
        *,
        invites: InviteReads | None = None,
        outliers: OutlierStore | None = None,
        clock: Callable[[], float] = time.time,
        max_state_events: int = DEFAULT_MAX_STATE_EVENTS,
    ) -> None:
        self.invites = invites
        self.outliers = outliers
        # The backfill perform (`worker.perform.backfill`), wired beside the remote paths.
        self.backfiller: Backfiller | None = None
        self.federation = federation
        self.inputs = inputs
        self.key = key
        self._clock = clock
        self.max_state_events = max_state_events
        self.versions = tuple(ROOM_VERSIONS)

    @property
    def server_name(self) -> str:
        return self.key.server_name

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _event_id_hint(self) -> str:
        return "$" + "".join(secrets.choice(_OPAQUE) for _ in range(18)) + ":" + self.server_name

    def _sign(self, template: Mapping[str, Any], rules: RoomRules, content: Mapping[str, Any]) -> Event | Rejection:
        pdu = fill_template(
            template, origin=self.server_name, origin_server_ts=self._now_ms(),
            content=content, event_id_hint=self._event_id_hint(), rules=rules,
        )
        return parse_pdu(hash_and_sign(pdu, rules, self.key), rules)

    # -- join --------------------------------------------------------------------------------

    async def resolve_alias(self, alias: str) -> tuple[str, list[str]]:
        """(room ID, servers to join through) of an alias of another server, asked of that
        server's directory (federation `/query/directory`). `PerformFailed`: `not_found`
        when it knows no such alias, `unavailable` when it could not be asked."""
        server = domain_of(alias)
        if not server:
            raise PerformFailed("bad_request", f"{alias!r} is not a room alias")
        answer = await self.federation.query_directory(server, alias)
        if isinstance(answer, Unanswered):
            raise _unavailable(f"could not resolve {alias}", [answer.reason])
        if answer.error_code:
            raise PerformFailed("not_found", f"unknown alias {alias}: {server} knows no such room")
        if not answer.room_id.startswith("!"):
            raise _unavailable(
                f"could not resolve {alias}", [f"{server} answered no room ID: {answer.room_id!r}"]
            )
        return answer.room_id, _distinct(list(answer.servers))

    async def join(
        self, room_id: str, user_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> str:
        """Join `user_id` to `room_id` through the first of `servers` that answers well; the
        join's event ID once the pipeline accepted it. `PerformFailed` otherwise."""
        reasons: list[str] = []
        for server in _distinct(servers):
            if server == self.server_name:
                continue
            start = time.perf_counter()
            joined = await self._join_via(server, room_id, user_id, content)
            if isinstance(joined, str):
                log.info("remote_join_server_failed", server=server, reason=joined)
                reasons.append(f"{server}: {joined}")
                continue
            checked = time.perf_counter()
            event_id = await self._store_join(room_id, joined)
            log.info(
                "remote_join_done", server=server, state=len(joined.snapshot.state_ids),
                events=len(joined.snapshot.events), asked_and_checked_s=checked - start,
                stored_s=time.perf_counter() - checked,
            )
            return event_id
        if not reasons:
            reasons.append("no server to join through was given")
        raise _unavailable(f"could not join {room_id}", reasons)

    async def _join_via(
        self, server: str, room_id: str, user_id: str, content: Mapping[str, Any]
    ) -> _Joined | str:
        made = await self.federation.make_join(server, room_id, user_id, self.versions)
        if isinstance(made, Unanswered):
            return made.reason
        rules = rules_for(made.room_version)
        if rules is None:
            return f"room version {made.room_version!r} is not supported here"
        template = check_template(
            _decode(made.event), rules, room_id=room_id, user_id=user_id, membership="join"
        )
        if isinstance(template, Rejection):
            return f"{template.code}: {template.reason}"
        join = self._sign(template, rules, content)
        if isinstance(join, Rejection):
            return f"the filled template is invalid: {join.reason}"
        sent = await self.federation.send_join(
            server, room_id, join.event_id, msgspec.json.encode(join.pdu)
        )
        if isinstance(sent, Unanswered):
            return sent.reason
        snapshot = check_room_events(
            [_decode(r) for r in sent.state], [_decode(r) for r in sent.auth_chain], rules,
            room_id, max_events=self.max_state_events,
        )
        if isinstance(snapshot, Rejection):
            return f"{snapshot.code}: {snapshot.reason}"
        returned = _decode(sent.event)
        if returned is not None:
            # The resident may add its signature (restricted joins); it must stay our event.
            theirs = check_event(returned, rules, room_id)
            if isinstance(theirs, Rejection) or theirs.event_id != join.event_id:
                return "send_join answered with another event than our join"
            join = theirs
        problem = _check_join(join, snapshot)
        if problem is not None:
            return f"{problem.code}: {problem.reason}"
        return _Joined(server, rules, snapshot, join)

    async def _store_join(self, room_id: str, joined: _Joined) -> str:
        version = joined.rules.version
        events = joined.snapshot.events
        if self.outliers is not None:
            # Stored in one transaction; the input stream carries only what the pipeline
            # must store itself, then the join. A crash in between leaves outliers alone,
            # which a retried join finds stored and skips.
            start = time.perf_counter()
            left = set(await self.outliers.store_outliers(room_id, version, events))
            log.info(
                "remote_join_outliers_stored", room_id=room_id, events=len(events),
                left_to_pipeline=len(left), seconds=time.perf_counter() - start,
            )
            events = tuple(e for e in events if e.event_id in left)
        # Not the bare event IDs as Nats-Msg-Id: events already sent (an invite, an earlier
        # attempt) would be dropped by JetStream's duplicate window, and their replies never
        # come. The pipeline answers a stored event as a duplicate instead.
        attempt = "~" + secrets.token_hex(4)
        inputs = [
            (InputRoomEvent(
                kind="outlier", event=msgspec.Raw(msgspec.json.encode(e.pdu)),
                room_version=version, origin=joined.server,
            ), e.event_id + attempt)
            for e in events
        ]
        # Federated already by send_join: the resident server spreads it to the room.
        inputs.append((InputRoomEvent(
            kind="new", event=msgspec.Raw(msgspec.json.encode(joined.join.pdu)),
            room_version=version, origin=joined.server,
            state_event_ids=joined.snapshot.state_ids,
        ), joined.join.event_id + attempt))
        # Every event was checked as the pipeline checks outliers, so only the join's verdict
        # is awaited: it comes after the rest (one room's inputs are handled in order), and
        # a state event that was not stored refuses it (`missing_state_events`).
        try:
            (verdict,) = await self.inputs.submit_inputs(room_id, inputs, every_reply=False)
        except TimeoutError:
            raise PerformFailed(
                "unavailable", f"no verdict on the join {joined.join.event_id} in time; "
                "it may still be stored",
            ) from None
        if verdict.outcome != "accepted":
            raise PerformFailed(
                "forbidden", f"the join was not accepted: {verdict.reason}",
                reason_code=verdict.reason_code, reason=verdict.reason,
            )
        return joined.join.event_id

    # -- leave (rejecting an invite) -------------------------------------------------------

    async def reject_invite(
        self, room_id: str, user_id: str, version: str, servers: Sequence[str], reason: str = ""
    ) -> str:
        """Reject an invite to a room we are not in, through the first server that takes our
        leave; the leave's event ID once stored. `PerformFailed` otherwise."""
        rules = rules_for(version)
        if rules is None:
            raise PerformFailed("internal", f"room {room_id} has unknown version {version!r}")
        reasons: list[str] = []
        for server in _distinct(servers):
            if server == self.server_name:
                continue
            left = await self._leave_via(server, room_id, user_id, rules, reason)
            if isinstance(left, str):
                reasons.append(f"{server}: {left}")
                continue
            raw = msgspec.Raw(msgspec.json.encode(left.pdu))
            inp = InputRoomEvent(kind="invite", event=raw, room_version=version, origin=server)
            msg_id = left.event_id + "~" + secrets.token_hex(4)
            reply = (await self.inputs.submit_inputs(room_id, [(inp, msg_id)]))[0]
            if reply.outcome != "outlier":
                raise PerformFailed(
                    "unavailable", f"the leave was sent but not stored: {reply.reason}"
                )
            return left.event_id
        raise _unavailable(f"could not reject the invite to {room_id}", reasons or ["no server"])

    async def _leave_via(
        self, server: str, room_id: str, user_id: str, rules: RoomRules, reason: str
    ) -> Event | str:
        made = await self.federation.make_leave(server, room_id, user_id)
        if isinstance(made, Unanswered):
            return made.reason
        if made.room_version and made.room_version != rules.version:
            return f"make_leave names room version {made.room_version!r}, not {rules.version!r}"
        template = check_template(
            _decode(made.event), rules, room_id=room_id, user_id=user_id, membership="leave"
        )
        if isinstance(template, Rejection):
            return f"{template.code}: {template.reason}"
        leave = self._sign(template, rules, {"reason": reason} if reason else {})
        if isinstance(leave, Rejection):
            return f"the filled template is invalid: {leave.reason}"
        sent = await self.federation.send_leave(
            server, room_id, leave.event_id, msgspec.json.encode(leave.pdu)
        )
        if isinstance(sent, Unanswered):
            return sent.reason
        return leave

    # -- invite of a remote user -----------------------------------------------------------

    async def countersign(
        self, invite: Event, state: Mapping[StateKey, Event]
    ) -> dict[str, Any]:
        """Our signed invite, countersigned by the invitee's server: the PDU to submit."""
        target = invite.state_key or ""
        destination = domain_of(target) or ""
        stripped = tuple(
            msgspec.json.encode(s)
            for s in stripped_state(state[k] for k in INVITE_STATE_KEYS if k in state)
        )
        answer = await self.federation.invite(
            destination, invite.room_id, invite.event_id, invite.rules.version,
            msgspec.json.encode(invite.pdu), stripped,
        )
        if isinstance(answer, Unanswered):
            raise _unavailable(f"{destination} did not countersign the invite", [answer.reason])
        back = check_event(_decode(answer.event), invite.rules, invite.room_id)
        if isinstance(back, Rejection):
            raise _unavailable(f"{destination} answered a bad invite", [back.reason])
        if back.event_id != invite.event_id:
            raise _unavailable(
                f"{destination} answered another event", [f"{back.event_id} for {invite.event_id}"]
            )
        signatures = back.pdu.get("signatures")
        theirs = signatures.get(destination) if isinstance(signatures, Mapping) else None
        if not isinstance(theirs, Mapping) or not theirs:
            raise _unavailable(
                f"{destination} did not countersign the invite", ["no signature of theirs"]
            )
        return dict(back.pdu)


def _check_join(join: Event, snapshot: RoomSnapshot) -> Rejection | None:
    """Our join against the answer: its auth events are among the answer's events, and the
    auth rules allow it against the state the answer gives."""
    known = {e.event_id: e for e in snapshot.events}
    missing = [a for a in join.auth_event_ids if a not in known]
    if missing:
        return Rejection(
            "missing_auth_events", f"the join cites auth events the answer lacks: {missing}"
        )
    problem = check_auth_event_list(join, [known[a] for a in join.auth_event_ids])
    if problem is not None:
        return problem
    state = {known[i].state_tuple: known[i] for i in snapshot.state_ids}
    auth: dict[StateKey, Event] = {}
    for key in auth_types_for_event(join):
        found = state.get(key)
        if found is not None:
            auth[key] = found
    auth.setdefault(CREATE_KEY, snapshot.create)
    return check_auth(join, auth)


def _decode(raw: msgspec.Raw | None) -> object:
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None


def _distinct(servers: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return [s for s in servers if s and not (s in seen or seen.add(s))]  # type: ignore[func-returns-value]


__all__ = [
    "DEFAULT_MAX_STATE_EVENTS",
    "INVITE_STATE_KEYS",
    "InputPort",
    "InviteReads",
    "OutlierStore",
    "PendingInvite",
    "RemoteFederation",
    "RemotePerformer",
]
