"""The worker's side of a purge (DESIGN §3 "Lifecycle"): the admin performs over this
worker's store, and the word passed between workers that a room was purged.

A purge is answered by whichever worker the micro service's queue group picks, not
necessarily the one whose shard holds the room. That one's caches may still hold the room's
row, the NIDs of its events and snapshots derived from them; so after a purge commits, the
worker that did it publishes the room ID on `<prefix>.admin.purged` (core NATS) and every
worker's store forgets the room (`forget_purged`). Until the word arrives, the write fence of
`worker.bus.shards` covers new events: a write computed from the purged room's row finds a
different row under the room's lock and is retried afresh.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from worker.bus.outbox import NatsOutboxRelay
from worker.observability.logging import get_logger
from worker.perform.admin import AdminPerforms
from worker.storage.purge import PostgresPurger
from worker.storage.store import PostgresStore

_log = get_logger(__name__)


def purged_subject(prefix: str) -> str:
    return f"{prefix}.admin.purged"


async def serve_purges(
    nc: Client, prefix: str, store: PostgresStore, relay: NatsOutboxRelay | None
) -> tuple[AdminPerforms, Callable[[], Awaitable[None]]]:
    """The admin performs over `store`, and a subscription that makes `store` forget rooms
    purged by any worker; returns them and the subscription's undo."""
    subject = purged_subject(prefix)

    async def on_word(msg: Msg) -> None:
        room_id = msg.data.decode()
        store.forget_purged(room_id)
        _log.debug("purged_room_forgotten", room_id=room_id)

    sub = await nc.subscribe(subject, cb=on_word)

    async def on_purged(room_id: str) -> None:
        if relay is not None:
            relay.kick(room_id)
        await nc.publish(subject, room_id.encode())

    return AdminPerforms(PostgresPurger(store), on_purged), sub.unsubscribe
