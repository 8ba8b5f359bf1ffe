"""Generate the example inputs of README's walkthrough (run from the repository root):

    .venv/bin/python examples/make_examples.py

Writes, deterministically (fixed timestamps, IDs are reference hashes):

- `examples/room.jsonl`: one InputRoomEvent per line for `roomserver send`, in the order a
  homeserver would receive them. A room version 10 room on example.org with
  1. a normal start: create, alice joins, power levels (alice 100, bob 50, ban 50), join
     rules, history visibility, name, topic; bob and carol join and talk;
  2. a fork with a **ban-vs-power-levels race**: bob bans carol while, concurrently, alice
     (who has not seen the ban) demotes bob to 0; both branches are accepted, and state
     resolution puts alice's power levels first, so bob's ban no longer passes and carol stays
     joined;
  3. a **merge**: alice's next message names both branches as prev events;
  4. a **soft-failed** event: bob, still on his stale branch, changes the topic (allowed by
     the state before it, not by the room's current state);
  5. **rejected** events: bob's topic change on the merged branch (he is at 0 now) and a
     message from mallory, who never joined;
  6. **redactions**: alice redacts one of carol's messages, bob redacts one of his own;
  7. a **federated join**: dave from remote.example joins with the room's state given as
     `state_event_ids`, as the federation API does after a send_join, then talks.
- `examples/linear.pdus.jsonl`: plain PDUs (no envelope) of a small room version 11 room,
  for `roomserver send --room-version 11`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.fixtures.builder import RoomBuilder  # noqa: E402

ALICE, BOB, CAROL = "@alice:example.org", "@bob:example.org", "@carol:example.org"
DAVE, MALLORY = "@dave:remote.example", "@mallory:evil.example"
ROOM = "!walkthrough:example.org"


def _pdu(b: RoomBuilder, event_id: str) -> dict[str, Any]:
    """The PDU as federation carries it: room versions 3+ have no `event_id` field."""
    pdu = dict(b.events[event_id])
    pdu.pop("event_id", None)
    return pdu


def _input(b: RoomBuilder, event_id: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "new", "event": _pdu(b, event_id)}
    out.update(extra)
    return out


def walkthrough_room() -> list[dict[str, Any]]:
    b = RoomBuilder("10", room_id=ROOM, real_ids=True)
    local = {"send_as_server": "example.org"}
    inputs: list[dict[str, Any]] = []

    # The fork below shares `b.events`, so every event, of either branch, is in `b`.
    def send(eid: str, **extra: Any) -> str:
        inputs.append(_input(b, eid, **{**local, **extra}))
        return eid

    # 1. The room starts.
    send(b.create(ALICE), room_version="10")
    send(b.join(ALICE))
    levels = {"ban": 50, "kick": 50, "redact": 50, "state_default": 50, "events_default": 0,
              "users_default": 0, "invite": 0}
    send(b.power_levels(ALICE, users={ALICE: 100, BOB: 50}, **levels))
    send(b.join_rules(ALICE, "public"))
    send(b.state_event("m.room.history_visibility", "", {"history_visibility": "shared"},
                             ALICE))
    send(b.state_event("m.room.name", "", {"name": "Walkthrough"}, ALICE))
    send(b.topic(ALICE, "Forks, races and redactions"))
    send(b.join(BOB))
    send(b.join(CAROL))
    send(b.message(BOB, "hi all"))
    carol_msg = send(b.message(CAROL, "my phone number is 555-0100"))
    bob_msg = send(b.message(BOB, "oops, wrong room"))

    # 2. The race: both branches grow from the same event.
    stale = b.fork()
    ban = send(stale.ban(BOB, CAROL, reason="spam"))
    demote = send(b.power_levels(ALICE, users={ALICE: 100, BOB: 0}, **levels))

    # 3. The merge. The builder's running state is alice's branch, which is also what state
    # resolution decides (the ban fails against the demoted power levels).
    send(b.message(ALICE, "bob: no more bans for you", prev=[ban, demote]))

    # 4. Soft-failed: bob's stale branch still says he is at 50.
    send(stale.topic(BOB, "bob rules", prev=[ban], apply=False))

    # 5. Rejected: bob at 0 on the merged branch; mallory never joined.
    # Refused events never become prev events of later ones, so the branch tip is kept.
    tip = list(b.latest)
    send(b.topic(BOB, "bob rules, really", apply=False, prev=tip))
    send(b.message(MALLORY, "buy cheap coins", apply=False, prev=tip))
    b.latest = tip

    # 6. Redactions.
    send(b.redact(ALICE, carol_msg))
    send(b.redact(BOB, bob_msg))

    # 7. A federated join: the state before the join comes with it.
    state_ids = sorted(b.state.values())
    send(b.join(DAVE), origin="remote.example", send_as_server="",
         state_event_ids=state_ids)
    send(b.message(DAVE, "hello from remote.example"), origin="remote.example",
         send_as_server="")
    send(b.message(CAROL, "welcome dave"))
    return inputs


def linear_room() -> list[dict[str, Any]]:
    b = RoomBuilder("11", room_id="!linear:example.org", real_ids=True)
    ids = [
        b.create(ALICE),
        b.join(ALICE),
        b.power_levels(ALICE, users={ALICE: 100}),
        b.join_rules(ALICE, "public"),
        b.join(BOB),
        b.message(BOB, "plain PDUs work too"),
        b.message(ALICE, "they do"),
    ]
    return [_pdu(b, i) for i in ids]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.relative_to(HERE.parent)}: {len(rows)} lines")


def main() -> None:
    _write(HERE / "room.jsonl", walkthrough_room())
    _write(HERE / "linear.pdus.jsonl", linear_room())


if __name__ == "__main__":
    main()
