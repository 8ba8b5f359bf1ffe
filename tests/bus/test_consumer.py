"""The input consumer against the embedded NATS, with fake handlers standing in for the pipeline.

Waits use generous timeouts only as hang guards; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from tests.bus.conftest import SHARDS
from worker.bus import settle
from worker.bus.consumer import ConsumerSettings, InputConsumer
from worker.bus.producer import publish_input, send_input
from worker.bus.settle import RetryPolicy
from worker.bus.shards import shard_of
from worker.bus.subjects import REPLY_INBOX_HEADER, ROOM_ID_HEADER, Subjects
from worker.core.outcomes import Outcome
from worker.errors import PermanentError, RetryableError
from worker.messages import DeadLetter, InputReply, InputRoomEvent, decode_deadletter, decode_reply
from worker.messages.reply import HandleResult

GUARD = 20.0  # seconds; only ever reached when something hangs

Behaviour = Callable[[str, InputRoomEvent, int], Awaitable[HandleResult]]


def event(room_id: str, n: int) -> InputRoomEvent:
    pdu = msgspec.json.encode({"room_id": room_id, "event_id": f"$e{n}", "type": "m.test"})
    return InputRoomEvent(kind="new", event=msgspec.Raw(pdu), origin="test")


def event_id_of(message: InputRoomEvent) -> str:
    eid: str = msgspec.json.decode(message.event)["event_id"]
    return eid


async def accept(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
    return HandleResult(event_id=event_id_of(message), outcome=Outcome.ACCEPTED)


@dataclass
class FakeHandler:
    behaviour: Behaviour = accept
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    async def handle(
        self,
        room_id: str,
        input: InputRoomEvent,
        *,
        delivery: int,
        in_progress: Callable[[], Awaitable[None]],
    ) -> HandleResult:
        self.calls.append((room_id, event_id_of(input), delivery))
        await in_progress()
        return await self.behaviour(room_id, input, delivery)


FAST = ConsumerSettings(
    shards=SHARDS,
    batch=16,
    max_in_flight=64,
    ack_wait=10.0,
    fetch_timeout=0.2,
    retry=RetryPolicy(max_deliveries=3, base_delay=0.01, max_delay=0.05),
    drain_grace=GUARD,
)


@contextlib.asynccontextmanager
async def running(
    nc: NATS, subjects: Subjects, handler: FakeHandler, settings: ConsumerSettings = FAST
) -> AsyncIterator[InputConsumer]:
    consumer = InputConsumer(nc, subjects, handler, settings)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.drain(grace=GUARD)


async def dead_letters(nc: NATS, subjects: Subjects, count: int) -> list[DeadLetter]:
    js = nc.jetstream()
    sub = await js.pull_subscribe(subjects.deadletter, stream=subjects.deadletter_stream)
    letters: list[DeadLetter] = []
    async with asyncio.timeout(GUARD):
        while len(letters) < count:
            with contextlib.suppress(TimeoutError):
                for msg in await sub.fetch(count - len(letters), timeout=0.5):
                    letters.append(decode_deadletter(msg.data))
                    await msg.ack()
    await sub.unsubscribe()
    return letters


async def input_left(nc: NATS, subjects: Subjects) -> int:
    return (await nc.jetstream().stream_info(subjects.input_stream)).state.messages


async def test_garbage_is_dead_lettered_while_a_valid_message_flows(
    nc: NATS, streams: Subjects
) -> None:
    handler = FakeHandler()
    js = nc.jetstream()
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    room = "!garbage:example.org"
    garbage = b"\xff{ this is not json"
    await js.publish(
        streams.input(room),
        garbage,
        headers={ROOM_ID_HEADER: room, REPLY_INBOX_HEADER: inbox, "X-Trace": "t1"},
    )
    async with running(nc, streams, handler):
        reply = await send_input(nc, streams, event(room, 1), timeout=GUARD)
        bad = decode_reply((await replies.next_msg(timeout=GUARD)).data)
    assert reply == InputReply(event_id="$e1", outcome="accepted")
    assert bad.outcome == "invalid" and bad.reason_code == "undecodable"
    assert handler.calls == [(room, "$e1", 1)]
    [letter] = await dead_letters(nc, streams, 1)
    assert letter.reason_code == "undecodable"
    assert "not an InputRoomEvent" in letter.reason and "JSON" in letter.reason
    assert letter.original_body() == garbage
    assert letter.subject == streams.input(room)  # as published, ready to republish
    assert letter.headers["X-Trace"] == "t1" and letter.headers[ROOM_ID_HEADER] == room
    assert letter.stream == streams.input_stream and letter.stream_sequence == 1
    assert await input_left(nc, streams) == 0


async def test_a_deeply_nested_body_is_dead_lettered_and_the_shard_goes_on(
    nc: NATS, streams: Subjects
) -> None:
    handler = FakeHandler()
    room = "!deep:example.org"
    deep = b'{"kind":"new","event":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    await nc.jetstream().publish(streams.input(room), deep, headers={ROOM_ID_HEADER: room})
    async with running(nc, streams, handler):
        reply = await send_input(nc, streams, event(room, 1), timeout=GUARD)
    assert reply == InputReply(event_id="$e1", outcome="accepted")
    [letter] = await dead_letters(nc, streams, 1)
    assert letter.reason_code == "undecodable" and "nested too deeply" in letter.reason
    assert await input_left(nc, streams) == 0


async def test_routing_problems_are_dead_lettered(nc: NATS, streams: Subjects) -> None:
    js = nc.jetstream()
    body = msgspec.json.encode(event("!a:x", 1))
    await js.publish(streams.input("!a:x"), body, headers={ROOM_ID_HEADER: "!other:x"})
    await js.publish(f"{streams.prefix}.input.IR", body)  # not a canonical room token
    handler = FakeHandler()
    async with running(nc, streams, handler) as consumer:
        letters = await dead_letters(nc, streams, 2)
        assert await consumer.wait_idle(GUARD)
    assert sorted(x.reason_code for x in letters) == ["bad_room_token", "room_mismatch"]
    assert handler.calls == []


async def test_one_event_at_a_time_per_room_many_rooms_at_once(
    nc: NATS, streams: Subjects
) -> None:
    rooms = [f"!room{i}:example.org" for i in range(4)]
    per_room = 5
    busy: set[str] = set()
    overlaps: list[str] = []
    # Every room's first event waits until all rooms have started one: this only finishes if
    # rooms really run concurrently (serial processing would hang and hit the guard).
    all_started = asyncio.Event()
    started: set[str] = set()

    async def behaviour(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        if room_id in busy:
            overlaps.append(room_id)
        busy.add(room_id)
        started.add(room_id)
        if len(started) == len(rooms):
            all_started.set()
        async with asyncio.timeout(GUARD):
            await all_started.wait()
        await asyncio.sleep(0)
        busy.discard(room_id)
        return HandleResult(event_id=event_id_of(message), outcome=Outcome.ACCEPTED)

    n = 0
    sent: dict[str, list[str]] = {r: [] for r in rooms}
    for _ in range(per_room):
        for room in rooms:
            n += 1
            await publish_input(nc, streams, event(room, n))
            sent[room].append(f"$e{n}")
    handler = FakeHandler(behaviour)
    async with running(nc, streams, handler) as consumer:
        async with asyncio.timeout(GUARD):
            while len(handler.calls) < n or consumer.in_flight:
                await asyncio.sleep(0.01)
    assert overlaps == []
    for room in rooms:
        assert [e for r, e, _ in handler.calls if r == room] == sent[room]
    assert await input_left(nc, streams) == 0


async def test_retryable_errors_back_off_then_dead_letter(nc: NATS, streams: Subjects) -> None:
    async def flaky(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        raise RetryableError("database unavailable", delay=0.01)

    handler = FakeHandler(flaky)
    async with running(nc, streams, handler):
        reply = await send_input(nc, streams, event("!r:x", 1), timeout=GUARD)
    assert [d for _, _, d in handler.calls] == [1, 2, 3]
    assert reply.outcome == "failed" and reply.reason_code == "transient_failure"
    [letter] = await dead_letters(nc, streams, 1)
    assert letter.reason_code == "transient_failure" and letter.delivery_count == 3
    assert "gave up after 3 deliveries: database unavailable" in letter.reason
    assert await input_left(nc, streams) == 0


async def test_recovers_when_the_retry_succeeds(nc: NATS, streams: Subjects) -> None:
    async def once(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        if delivery == 1:
            raise RetryableError("blip")
        return HandleResult(event_id=event_id_of(message), outcome=Outcome.SOFT_FAILED,
                            reason_code="not_allowed", reason="soft", duplicate=True)

    handler = FakeHandler(once)
    async with running(nc, streams, handler):
        reply = await send_input(nc, streams, event("!r:x", 1), timeout=GUARD)
    assert reply == InputReply(event_id="$e1", outcome="soft_failed", reason_code="not_allowed",
                               reason="soft", duplicate=True)
    assert [d for _, _, d in handler.calls] == [1, 2]


async def test_a_retry_keeps_the_rooms_order(nc: NATS, streams: Subjects) -> None:
    # The first event of the room fails once; its successor must still be handled after it
    # (a nak would have let the successor overtake it). Another room is not held up.
    async def behaviour(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        if event_id_of(message) == "$e1" and delivery == 1:
            raise RetryableError("blip", delay=0.2)
        return HandleResult(event_id=event_id_of(message), outcome=Outcome.ACCEPTED)

    for n, room in [(1, "!a:x"), (2, "!a:x"), (3, "!a:x"), (4, "!b:x")]:
        await publish_input(nc, streams, event(room, n))
    handler = FakeHandler(behaviour)
    async with running(nc, streams, handler) as consumer:
        async with asyncio.timeout(GUARD):
            while len(handler.calls) < 5 or consumer.in_flight:
                await asyncio.sleep(0.01)
    assert [(e, d) for r, e, d in handler.calls if r == "!a:x"] == [
        ("$e1", 1), ("$e1", 2), ("$e2", 1), ("$e3", 1)
    ]
    order = [e for _, e, _ in handler.calls]
    assert order.index("$e4") < order.index("$e2")
    assert await input_left(nc, streams) == 0


def _settled(action: str) -> float:
    value = REGISTRY.get_sample_value("roomserver_messages_settled_total", {"action": action})
    return value or 0.0


async def test_the_retry_row_is_a_retry_in_place_not_a_nak(nc: NATS, streams: Subjects) -> None:
    """What `FATE_TABLE` says of a retryable failure is what the consumer does: no message
    action (no nak, JetStream never redelivers), the same message handled again as its
    next delivery, then settled once by the outcome of that attempt."""
    assert settle.FATE_TABLE[settle.Situation.RETRY][0] is settle.AckAction.RETRY_HERE

    async def twice(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        if delivery < 3:
            raise RetryableError("blip", delay=0.01)
        return HandleResult(event_id=event_id_of(message), outcome=Outcome.ACCEPTED)

    naks, acks = _settled("nak"), _settled("ack")
    handler = FakeHandler(twice)
    async with running(nc, streams, handler) as consumer:
        reply = await send_input(nc, streams, event("!r:x", 1), timeout=GUARD)
        info = await nc.jetstream().consumer_info(
            streams.input_stream, streams.input_consumer(_shard_of(consumer, streams))
        )
    assert reply.outcome == "accepted"
    assert [d for _, _, d in handler.calls] == [1, 2, 3]
    assert (_settled("nak") - naks, _settled("ack") - acks) == (0, 1)
    assert info.num_redelivered == 0 and info.delivered.consumer_seq == 1


def _shard_of(consumer: InputConsumer, streams: Subjects) -> int:
    """The shard of the one room these tests use ("!r:x")."""
    return shard_of("!r:x", consumer.settings.shards)


class _FailingOnce:
    """A dead-letter writer whose first write fails as an unreachable stream would."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.failed = 0

    async def write(self, **kw: object) -> object:
        if not self.failed:
            self.failed += 1
            raise RetryableError("dead-letter stream unavailable")
        return await self.real.write(**kw)  # type: ignore[attr-defined]


async def test_the_dead_letter_failure_row_is_a_nak(nc: NATS, streams: Subjects) -> None:
    """A message whose dead letter could not be written is nakked, as the table says:
    JetStream delivers it again (delivery 2 comes from JetStream), and then it is
    dead-lettered and terminated."""
    action, dead_letter, _ = settle.FATE_TABLE[settle.Situation.DEADLETTER_FAILED]
    assert action is settle.AckAction.NAK and not dead_letter

    async def broken(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        raise PermanentError("cannot ever work")

    naks, terms = _settled("nak"), _settled("term")
    handler = FakeHandler(broken)
    fast_retry = dataclasses.replace(FAST, retry=RetryPolicy(max_deliveries=3, base_delay=0.01))
    consumer = InputConsumer(nc, streams, handler, fast_retry)
    writer = _FailingOnce(consumer._settler.deadletters)
    consumer._settler.deadletters = writer  # type: ignore[assignment]
    await consumer.start()
    try:
        reply = await send_input(nc, streams, event("!r:x", 1), timeout=GUARD)
    finally:
        await consumer.drain(grace=GUARD)
    assert reply.outcome == "failed" and reply.reason_code == "permanent_failure"
    assert writer.failed == 1
    assert [d for _, _, d in handler.calls] == [1, 2]
    assert (_settled("nak") - naks, _settled("term") - terms) == (1, 1)
    [letter] = await dead_letters(nc, streams, 1)
    assert letter.reason_code == "permanent_failure" and letter.delivery_count == 2
    assert await input_left(nc, streams) == 0


async def test_permanent_errors_and_invalid_events_go_to_dead_letters(
    nc: NATS, streams: Subjects
) -> None:
    async def behaviour(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        eid = event_id_of(message)
        if eid == "$e1":
            raise PermanentError("cannot ever work")
        if eid == "$e2":
            raise ZeroDivisionError("a bug")
        return HandleResult(event_id=eid, outcome=Outcome.INVALID, reason_code="bad_event_id",
                            reason="the event ID is not the reference hash")

    handler = FakeHandler(behaviour)
    async with running(nc, streams, handler):
        replies = [await send_input(nc, streams, event(f"!r{i}:x", i), timeout=GUARD)
                   for i in (1, 2, 3)]
    assert [(r.outcome, r.reason_code) for r in replies] == [
        ("failed", "permanent_failure"),
        ("failed", "invariant_violation"),
        ("invalid", "bad_event_id"),
    ]
    assert len(handler.calls) == 3  # none retried
    letters = await dead_letters(nc, streams, 3)
    assert sorted(x.reason_code for x in letters) == [
        "bad_event_id", "invariant_violation", "permanent_failure"
    ]
    assert await input_left(nc, streams) == 0


async def test_a_message_delivered_too_often_is_dead_lettered(nc: NATS, streams: Subjects) -> None:
    # Simulate workers that crashed on the message: deliveries that were never settled.
    room = "!crashy:x"
    ack = await publish_input(nc, streams, event(room, 1))
    consumer = InputConsumer(nc, streams, FakeHandler(), FAST)
    shard_subject = next(iter(
        (await nc.jetstream().stream_info(streams.input_stream, subjects_filter=">")).state.subjects
        or {}
    ))
    shard, _ = streams.parse_stored_input(shard_subject)
    assert shard is not None and ack.seq == 1
    await consumer.ensure_consumer(shard)
    sub = await nc.jetstream().pull_subscribe_bind(
        streams.input_consumer(shard), streams.input_stream
    )
    for _ in range(FAST.retry.max_deliveries):
        [msg] = await sub.fetch(1, timeout=GUARD)
        await msg.nak(delay=0.001)
    await sub.unsubscribe()
    handler = FakeHandler()
    async with running(nc, streams, handler):
        [letter] = await dead_letters(nc, streams, 1)
    assert letter.reason_code == "delivery_limit" and letter.delivery_count == 4
    assert handler.calls == []


async def test_republished_input_is_dropped_as_duplicate(nc: NATS, streams: Subjects) -> None:
    first = await publish_input(nc, streams, event("!r:x", 1))
    again = await publish_input(nc, streams, event("!r:x", 1))
    assert not first.duplicate and again.duplicate
    assert await input_left(nc, streams) == 1


async def test_drain_finishes_in_flight_work(nc: NATS, streams: Subjects) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        entered.set()
        await release.wait()
        return HandleResult(event_id=event_id_of(message), outcome=Outcome.ACCEPTED)

    handler = FakeHandler(slow)
    consumer = InputConsumer(nc, streams, handler, FAST)
    await consumer.start()
    await publish_input(nc, streams, event("!r:x", 1))
    async with asyncio.timeout(GUARD):
        await entered.wait()
    draining = asyncio.create_task(consumer.drain(grace=GUARD))
    await asyncio.sleep(0.05)
    assert not draining.done()  # waiting for the handler, not giving up
    # Published during the drain: a pull already under way may still bring it, in which case
    # it must be finished too; otherwise it waits in the stream for the next owner.
    await publish_input(nc, streams, event("!r:x", 2))
    release.set()
    assert await draining is True
    assert consumer.shards == frozenset()
    taken = [e for _, e, _ in handler.calls]
    assert taken in (["$e1"], ["$e1", "$e2"])
    assert await input_left(nc, streams) == 2 - len(taken)
    js = nc.jetstream()
    for shard in range(SHARDS):
        info = await js.consumer_info(streams.input_stream, streams.input_consumer(shard))
        assert info.num_ack_pending == 0  # nothing taken and left unsettled


async def test_drain_past_the_grace_hands_work_back_unacked(nc: NATS, streams: Subjects) -> None:
    entered = asyncio.Event()

    async def stuck(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    consumer = InputConsumer(nc, streams, FakeHandler(stuck), FAST)
    await consumer.start()
    await publish_input(nc, streams, event("!r:x", 1))
    async with asyncio.timeout(GUARD):
        await entered.wait()
    assert await consumer.drain(grace=0.1) is False
    # Not acked: the message is still in the stream and is delivered again at once.
    assert await input_left(nc, streams) == 1
    handler = FakeHandler()
    async with running(nc, streams, handler) as again:
        async with asyncio.timeout(GUARD):
            while not handler.calls or again.in_flight:
                await asyncio.sleep(0.01)
    assert handler.calls == [("!r:x", "$e1", 2)]


async def test_shards_start_and_stop_one_by_one(nc: NATS, streams: Subjects) -> None:
    consumer = InputConsumer(nc, streams, FakeHandler(), FAST)
    await consumer.start([1])
    assert consumer.shards == frozenset({1})
    await consumer.start_shard(0)
    assert consumer.shards == frozenset({0, 1})
    assert await consumer.stop_shard(1, grace=GUARD)
    assert consumer.shards == frozenset({0})
    with pytest.raises(ValueError):
        await consumer.start_shard(SHARDS)
    assert await consumer.drain(grace=GUARD)


async def test_held_messages_are_kept_alive_past_the_ack_wait(nc: NATS, streams: Subjects) -> None:
    # ack_wait 1 s; three events of one room take ~0.6 s each, so the last one is held
    # (queued, then handled) well past the ack wait. Without the periodic in_progress
    # JetStream would redeliver them while they are still being worked on.
    async def slow(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        await asyncio.sleep(0.6)
        return HandleResult(event_id=event_id_of(message), outcome=Outcome.ACCEPTED)

    class Silent(FakeHandler):
        async def handle(
            self,
            room_id: str,
            input: InputRoomEvent,
            *,
            delivery: int,
            in_progress: Callable[[], Awaitable[None]],
        ) -> HandleResult:
            self.calls.append((room_id, event_id_of(input), delivery))
            return await self.behaviour(room_id, input, delivery)

    handler = Silent(slow)
    settings = dataclasses.replace(FAST, ack_wait=1.0)
    for n in (1, 2, 3):
        await publish_input(nc, streams, event("!slow:x", n))
    async with running(nc, streams, handler, settings) as consumer:
        async with asyncio.timeout(GUARD):
            while len(handler.calls) < 3 or consumer.in_flight:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # a redelivery of anything unsettled would show up by now
    assert handler.calls == [("!slow:x", f"$e{n}", 1) for n in (1, 2, 3)]
    assert await input_left(nc, streams) == 0


def _gated() -> tuple[asyncio.Event, list[str], FakeHandler]:
    """A handler that records each room it enters and holds it there until the gate opens."""
    gate = asyncio.Event()
    entered: list[str] = []

    async def blocked(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        entered.append(room_id)
        await gate.wait()
        return HandleResult(event_id=event_id_of(message), outcome=Outcome.ACCEPTED)

    return gate, entered, FakeHandler(blocked)


async def test_in_flight_is_bounded(nc: NATS, streams: Subjects) -> None:
    gate, entered, handler = _gated()
    for n in range(10):
        await publish_input(nc, streams, event(f"!room{n}:x", n))
    settings = dataclasses.replace(FAST, max_in_flight=4)
    async with running(nc, streams, handler, settings) as consumer:
        async with asyncio.timeout(GUARD):
            while len(entered) < 4:
                await asyncio.sleep(0.01)
        # Several fetch rounds pass while the handlers block; none may take more.
        await asyncio.sleep(4 * FAST.fetch_timeout)
        assert consumer.in_flight == 4 and len(entered) == 4
        gate.set()
        async with asyncio.timeout(GUARD):
            while len(handler.calls) < 10 or consumer.in_flight:
                await asyncio.sleep(0.01)
    assert sorted(r for r, _, _ in handler.calls) == sorted(f"!room{n}:x" for n in range(10))
    assert await input_left(nc, streams) == 0


async def test_in_flight_bytes_are_bounded(nc: NATS, streams: Subjects) -> None:
    """A shard whose share of the bytes is full fetches no more, whatever the count allows:
    with a byte a shard and one message a fetch, each shard holds one message at a time."""
    from worker.bus.shards import shard_of

    gate, entered, handler = _gated()
    rooms = [f"!room{n}:x" for n in range(10)]
    assert {shard_of(r, SHARDS) for r in rooms} == set(range(SHARDS))
    for n, room in enumerate(rooms):
        await publish_input(nc, streams, event(room, n))
    settings = dataclasses.replace(FAST, batch=1, max_in_flight_bytes=SHARDS)
    async with running(nc, streams, handler, settings) as consumer:
        async with asyncio.timeout(GUARD):
            while len(entered) < SHARDS:
                await asyncio.sleep(0.01)
        await asyncio.sleep(4 * FAST.fetch_timeout)
        assert consumer.in_flight == SHARDS and len(entered) == SHARDS
        gate.set()
        async with asyncio.timeout(GUARD):
            while len(handler.calls) < 10 or consumer.in_flight:
                await asyncio.sleep(0.01)
    assert sorted(r for r, _, _ in handler.calls) == sorted(rooms)
    assert await input_left(nc, streams) == 0


async def test_a_rooms_backlog_in_one_shard_does_not_starve_another_shard(
    nc: NATS, streams: Subjects
) -> None:
    from worker.bus.shards import shard_of

    rooms = [f"!r{i}:x" for i in range(50)]
    hot = rooms[0]
    cold = next(r for r in rooms if shard_of(r, SHARDS) != shard_of(hot, SHARDS))
    gate = asyncio.Event()

    async def behaviour(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        if room_id == hot:
            await gate.wait()
        return HandleResult(event_id=event_id_of(message), outcome=Outcome.ACCEPTED)

    # The hot room's backlog alone is larger than the worker's whole in-flight budget.
    for n in range(12):
        await publish_input(nc, streams, event(hot, n))
    await publish_input(nc, streams, event(cold, 100))
    handler = FakeHandler(behaviour)
    settings = dataclasses.replace(FAST, max_in_flight=8, batch=8)
    async with running(nc, streams, handler, settings) as consumer:
        async with asyncio.timeout(GUARD):
            while not any(r == cold for r, _, _ in handler.calls):
                await asyncio.sleep(0.01)
        assert not gate.is_set()
        gate.set()
        async with asyncio.timeout(GUARD):
            while len(handler.calls) < 13 or consumer.in_flight:
                await asyncio.sleep(0.01)
    assert await input_left(nc, streams) == 0


async def test_shard_consumers_are_updated_in_place(nc: NATS, streams: Subjects) -> None:
    await publish_input(nc, streams, event("!r:x", 1))
    js = nc.jetstream()
    for in_flight in (4, 8):
        consumer = InputConsumer(
            nc, streams, FakeHandler(), dataclasses.replace(FAST, max_in_flight=in_flight)
        )
        for shard in range(SHARDS):
            await consumer.ensure_consumer(shard)
    infos = [
        await js.consumer_info(streams.input_stream, streams.input_consumer(s))
        for s in range(SHARDS)
    ]
    assert [i.config.max_ack_pending for i in infos] == [8] * SHARDS
    assert [i.config.max_deliver for i in infos] == [FAST.retry.max_deliveries + 1] * SHARDS
    assert sum(i.num_pending for i in infos) == 1  # the waiting input is still there


def test_settings_from_the_worker_configuration() -> None:
    cfg = ConsumerSettings.configured(
        shards=8, max_retries=2, retry_backoff=0.5, drain_grace=7.0
    )
    assert cfg.shards == 8 and cfg.drain_grace == 7.0
    assert cfg.retry.max_deliveries == 3 and cfg.retry.base_delay == 0.5
