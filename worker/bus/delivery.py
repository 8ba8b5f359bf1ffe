"""One fetched input message as the consumer holds it, and what its ack subject says."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from worker.messages.input import InputRoomEvent
from worker.observability.logging import get_logger
from worker.observability.metrics import count_settle

_log = get_logger(__name__)


@dataclass(slots=True, eq=False)
class Delivery:
    """One fetched message held by this worker until it is settled."""

    msg: Msg
    shard: int
    delivery: int
    stream_sequence: int
    event_id: str
    reply_inbox: str | None
    # Exactly one of these is set by intake: the decoded input, or why it could not be.
    input: InputRoomEvent | None = None
    problem: tuple[str, str] | None = None
    received: float = field(default_factory=time.monotonic)
    settled: bool = False
    # Counted against its shard's fetch window (see `_leave_window`).
    windowed: bool = True

    async def touch(self) -> None:
        """Tell JetStream the message is still being worked on (the `in_progress` callable)."""
        if self.settled:
            return
        try:
            await self.msg.in_progress()
            count_settle("in_progress")
        except (NatsError, JetStreamError) as exc:
            _log.warning("in_progress_failed", error=repr(exc), event_id=self.event_id)


class AckInfo(NamedTuple):
    """What the ack subject of a JetStream delivery says about it."""

    delivered: int
    stream_sequence: int
    consumer_sequence: int
    pending: int


def ack_info(reply: str | None) -> AckInfo | None:
    """Read a delivery's ack subject (ADR-15): `$JS.ACK.<stream>.<consumer>.<delivered>.
    <stream seq>.<consumer seq>.<timestamp>.<pending>`, or, from nats-server 2.9, with
    `<domain>.<account hash>.` after `$JS.ACK.` and possibly tokens more at the end. None
    for anything else. nats-py's `Msg.metadata` reads the same, into three dataclasses and a
    datetime per message, a cost per event this avoids."""
    if not reply:
        return None
    tokens = reply.split(".")
    n = len(tokens)
    if n == 9:
        at = 4
    elif n >= 11:
        at = 6
    else:
        return None
    if tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    try:
        return AckInfo(
            int(tokens[at]), int(tokens[at + 1]), int(tokens[at + 2]), int(tokens[at + 4])
        )
    except ValueError:
        return None


__all__ = ["AckInfo", "Delivery", "ack_info"]
