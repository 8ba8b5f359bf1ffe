"""Rooms for the purge tests, built with `RoomBuilder` and fed through the real pipeline into
PostgreSQL, and a dump of a database by string IDs (NIDs differ between databases)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import builder
from worker.messages import HandleResult, InputRoomEvent
from worker.pipeline import Pipeline
from worker.storage import PostgresStore


class NoRelay:
    """Outputs stay in the outbox, where the tests read them."""

    async def flush(self, room_id: str) -> None:
        return None


def busy_room(room_id: str, messages: int = 5) -> RoomBuilder:
    """A room with some of everything: topic changes, an invite accepted, a kick, a ban, a
    redaction, a rejected event and messages."""
    b = _started(room_id)
    b.topic("alice", "first")
    b.invite("alice", "carol")
    b.join("carol")
    for i in range(messages):
        b.message("bob", f"m{i}")
    target = b.message("carol", "oops")
    b.redact("alice", target)
    b.topic("alice", "second")
    b.kick("alice", "carol")
    b.invite("alice", "dave")
    latest = list(b.latest)
    b.ban("bob", "alice", apply=False)  # bob may not ban: rejected
    b.latest = latest
    b.message("alice", "last")
    return b


def _started(room_id: str) -> RoomBuilder:
    b = builder("10", room_id=room_id)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "public")
    b.join("bob")
    return b


def inputs(b: RoomBuilder, event_ids: Sequence[str] | None = None) -> list[InputRoomEvent]:
    ids = list(b.events) if event_ids is None else event_ids
    return [InputRoomEvent(kind="new", event=msgspec.Raw(msgspec.json.encode(b.events[e])))
            for e in ids]


async def feed(pipeline: Pipeline, b: RoomBuilder,
               event_ids: Sequence[str] | None = None) -> list[HandleResult]:
    return [await pipeline.handle(b.room_id, i) for i in inputs(b, event_ids)]


async def feed_interleaved(pipeline: Pipeline, rooms: Sequence[RoomBuilder]) -> None:
    """The rooms' events in turns, one event of each room at a time."""
    queues = [inputs(b) for b in rooms]
    for n in range(max(len(q) for q in queues)):
        for b, q in zip(rooms, queues, strict=True):
            if n < len(q):
                await pipeline.handle(b.room_id, q[n])


def pipeline_over(store: PostgresStore) -> Pipeline:
    return Pipeline(store, NoRelay())


# Each table by string IDs, rows sorted: what must be equal between two databases holding
# the same rooms (NIDs differ; snapshots and blocks are compared through the states they
# give, and counted). A table missing here fails `dump`.
DUMPS: dict[str, str] = {
    "rooms": "SELECT room_id, room_version, extremities, notes::text, current_snapshot_nid IS NULL"
             " FROM rooms",
    "events": "SELECT event_id, r.room_id, t.event_type, s.state_key, depth, kind, outcome,"
              " reason_code, reason, membership, before_snapshot_nid IS NULL, redacted_by,"
              " ARRAY(SELECT a.event_id FROM events a WHERE a.event_nid = ANY(e.auth_event_nids)"
              " ORDER BY 1) FROM events e JOIN rooms r USING (room_nid)"
              " JOIN event_types t USING (type_nid)"
              " LEFT JOIN state_keys s ON s.state_key_nid = e.state_key_nid",
    "event_json": "SELECT e.event_id, j.json FROM event_json j JOIN events e USING (event_nid)",
    "event_prevs": "SELECT p.prev_event_id, e.event_id FROM event_prevs p"
                   " JOIN events e USING (event_nid)",
    "state_blocks": "SELECT r.room_id, count(*) FROM state_blocks JOIN rooms r USING (room_nid)"
                    " GROUP BY 1",
    "state_snapshots": "SELECT r.room_id, count(*) FROM state_snapshots"
                       " JOIN rooms r USING (room_nid) GROUP BY 1",
    "memberships": "SELECT r.room_id, s.state_key, m.membership, e.event_id FROM memberships m"
                   " JOIN rooms r USING (room_nid) JOIN state_keys s"
                   " ON s.state_key_nid = m.target_nid JOIN events e USING (event_nid)",
    "invites": "SELECT e.event_id, r.room_id, s.state_key, i.retired FROM invites i"
               " JOIN events e ON e.event_nid = i.invite_event_nid JOIN rooms r"
               " ON r.room_nid = i.room_nid JOIN state_keys s ON s.state_key_nid = i.target_nid",
    "redactions": "SELECT redaction_event_id, target_event_id, applied FROM redactions",
    "outbox": "SELECT output_id, room_id, output_type, payload FROM outbox",
    "write_log": "SELECT r.room_id, e.event_id FROM write_log w JOIN rooms r USING (room_nid)"
                 " JOIN events e USING (event_nid)",
    "event_types": "SELECT event_type FROM event_types",
    "state_keys": "SELECT state_key FROM state_keys",
    "schema_migrations": "SELECT version, name FROM schema_migrations",
    "room_joined_counts": "SELECT r.room_id, c.joined FROM room_joined_counts c"
                          " JOIN rooms r USING (room_nid)",
    "room_aliases": "SELECT alias, room_id, creator FROM room_aliases",
    "room_directory": "SELECT room_id FROM room_directory",
    "perform_txns": "SELECT sender, txn_id, room_id, event_id FROM perform_txns",
    "forgotten_rooms": "SELECT user_id, room_id FROM forgotten_rooms",
}


async def tables(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    return {r["table_name"] for r in rows}


async def dump(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    missing = await tables(pool) - DUMPS.keys()
    assert not missing, f"tables with no dump query: {sorted(missing)}"
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table, sql in DUMPS.items():
        out[table] = sorted((tuple(r) for r in await pool.fetch(sql)), key=repr)
    return out


def long_room(room_id: str, events: int) -> RoomBuilder:
    """About `events` events: users joining and leaving over time, the topic and name
    changing, power levels raised now and then, messages in between."""
    b = _started(room_id)
    n = 0
    joined: list[str] = []
    while len(b.events) < events:
        n += 1
        user = f"u{n % 97}"
        if n % 7 == 0 and user not in joined:
            b.join(user)
            joined.append(user)
        elif n % 23 == 0 and joined:
            b.leave(joined.pop(0))
        elif n % 31 == 0:
            b.topic("alice", f"topic {n}")
        elif n % 101 == 0:
            b.state_event("m.room.name", "", {"name": f"name {n}"}, "alice")
        elif n % 211 == 0:
            b.power_levels("alice", users={"alice": 100, "bob": 50 + n % 40})
        else:
            b.message("bob", f"message {n}")
    return b


def continuation(b: RoomBuilder) -> list[str]:
    """New events on top of `b`: accepted, rejected (no power, not joined) and a fork merged."""
    out = [b.join("late"), b.message("late", "hi"), b.topic("alice", "after the purge")]
    latest = list(b.latest)
    out.append(b.ban("late", "bob", apply=False))  # late (0) may not ban: rejected
    b.latest = latest
    latest = list(b.latest)
    out.append(b.message("stranger", "let me in", apply=False))  # not joined: rejected
    b.latest = latest
    fork = b.fork()
    out.append(b.topic("alice", "main"))
    out.append(fork.message("bob", "side"))
    out.append(b.message("alice", "merged", prev=[out[-2], out[-1]]))
    out.append(b.leave("late"))
    return out
