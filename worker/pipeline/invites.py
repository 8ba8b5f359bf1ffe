"""Input kind `invite`: a membership event of one of our users in a room this server is not
in (DESIGN §4, "incoming invite").

Another server invites one of our users to a room we hold nothing of, or we reject such an
invite through `make_leave` / `send_leave`. We cannot check either against the room's auth
events (we have none: that is what an invite to a room we are not in means); the federation
service checked the inviting server's signature, and the event's own format, ID and room
were validated in step 2. So the event is stored as an outlier as it is, and announced:

- `invite` (a user invited): `new_invite_event`, with the stripped state the inviting
  server put in `unsigned.invite_room_state` for the invitee's client;
- `leave` by the invitee (the invite rejected): `retire_invite_event` for the invite it
  cites among its auth events (the auth rules make a leave cite the sender's membership).

A later join through `make_join` / `send_join` retires the invite as any join does, when
it enters the room's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from worker.core.events import MEMBER
from worker.core.outcomes import Outcome, Rejection
from worker.messages import NewInviteEvent, RetireInviteEvent
from worker.pipeline.events import event_raw, stored_json
from worker.pipeline.model import EventWrite, Result, StoredEvent, Work, refused
from worker.pipeline.outputs import records


class InviteReads(Protocol):
    """What an invite reads: the auth events it cites."""

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The known events among `event_ids` (unknown ones are absent)."""
        ...


async def invite_write(store: InviteReads, work: Work) -> EventWrite | Result:
    """The write of an `invite` input, or why it is refused (`invalid`: not an invite or an
    invitee's leave, so not something this kind may carry)."""
    event = work.event
    membership = event.membership if event.type == MEMBER else None
    if event.state_key is None or membership not in ("invite", "leave"):
        bad = Rejection("bad_invite", "an invite input must be an m.room.member invite or leave")
        return refused(event.event_id, Outcome.INVALID, bad)
    outputs: list[NewInviteEvent | RetireInviteEvent] = []
    if membership == "invite":
        outputs.append(NewInviteEvent(room_version=work.rules.version, event=event_raw(event)))
    else:
        if event.sender != event.state_key:
            bad = Rejection("bad_invite", "only the invitee's own leave rejects an invite")
            return refused(event.event_id, Outcome.INVALID, bad)
        cited = await store.events(list(event.auth_event_ids))
        for stored in cited.values():
            ev = stored.event
            if ev.type == MEMBER and ev.state_key == event.state_key and ev.membership == "invite":
                outputs.append(RetireInviteEvent(
                    event_id=ev.event_id, room_id=work.room_id, target_user_id=event.state_key,
                    retired_by_event_id=event.event_id, membership="leave",
                ))
    return EventWrite(
        room_id=work.room_id,
        room_version=work.rules.version,
        event=event,
        event_json=stored_json(event),
        kind="outlier",
        outcome=Outcome.OUTLIER,
        outputs=records(event, list(outputs), None, []),
    )


def retired_by_rewrite(
    work: Work, outputs: list[NewInviteEvent | RetireInviteEvent]
) -> list[RetireInviteEvent]:
    """Invites that a state-rewriting join (a remote join: `state_event_ids`) retires beyond
    those `invite_outputs` saw leave the current state: an invite stored by an `invite`
    input was never in our current state, so it is found among the join's auth events (the
    auth rules make a join cite the joiner's membership)."""
    event = work.event
    if work.inp.state_event_ids is None or event.type != MEMBER or event.membership != "join":
        return []
    done = {o.event_id for o in outputs if isinstance(o, RetireInviteEvent)}
    out: list[RetireInviteEvent] = []
    for aid in event.auth_event_ids:
        stored = work.known.get(aid)
        ev = stored.event if stored is not None else None
        if ev is None or ev.event_id in done or ev.type != MEMBER:
            continue
        if ev.state_key == event.state_key and ev.membership == "invite":
            out.append(RetireInviteEvent(
                event_id=ev.event_id, room_id=work.room_id, target_user_id=event.state_key or "",
                retired_by_event_id=event.event_id, membership="join",
            ))
    return out


__all__ = ["invite_write", "retired_by_rewrite"]
