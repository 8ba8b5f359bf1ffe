"""A worker stopped in the middle of a burst of `send_event`s with transaction IDs: clients
retry what went unanswered against the next worker, and every transaction ends as exactly
one event (none lost, none doubled)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import msgspec
import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from tests.e2e.conftest import Client
from tests.perform.conftest import Api, Performer, user
from worker.bus.subjects import Subjects

ALICE = user("alice")
BURST = 60


async def _send_until_answered(api: Api, room_id: str, i: int) -> str:
    body = {"room_id": room_id, "sender": ALICE, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": f"m{i}"}, "txn_id": f"txn-{i}"}
    while True:
        try:
            msg = await api.nc.request(
                f"{api.prefix}.perform.send_event", json.dumps(body).encode(), timeout=3.0
            )
        except (NatsTimeoutError, NoRespondersError, TimeoutError):
            await asyncio.sleep(0.2)
            continue
        data = json.loads(msg.data)
        if (msg.headers or {}).get("Nats-Service-Error-Code"):
            # unavailable / internal while the worker goes away: ask again.
            assert data["code"] in ("unavailable", "internal"), data
            await asyncio.sleep(0.2)
            continue
        event_id: str = data["event_id"]
        return event_id


async def test_restart_in_a_burst_of_transactions(
    performer: Performer, api: Api, nats_url: str, prefix: str
) -> None:
    room_id = (await api.perform("create_room", creator=ALICE, preset="public_chat"))["room_id"]
    tasks = [asyncio.create_task(_send_until_answered(api, room_id, i)) for i in range(BURST)]
    # Let part of the burst through, then stop the worker without draining.
    while sum(t.done() for t in tasks) < BURST // 4:
        await asyncio.sleep(0.05)
    await performer.stop(graceful=False)
    assert sum(t.done() for t in tasks) < BURST
    await performer.start()
    event_ids = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    assert len(set(event_ids)) == BURST
    # Asked again, every transaction answers its one event.
    again = [await _send_until_answered(api, room_id, i) for i in range(0, BURST, 7)]
    assert again == event_ids[::7]
    nc = await nats.connect(nats_url)
    try:
        reader = Client(nc, Subjects(prefix))
        outputs = await reader.outputs(at_least=BURST)
    finally:
        await nc.close()
    sent = Counter(
        msgspec.json.decode(o.new_room_event.event)["content"].get("body")
        for o in outputs if o.new_room_event is not None
    )
    assert all(sent[f"m{i}"] == 1 for i in range(BURST)), sent
    stored = await api.query("events_by_id", event_ids=event_ids)
    assert not stored.get("missing_event_ids")
