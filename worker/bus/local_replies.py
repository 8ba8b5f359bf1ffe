"""Replies to inputs submitted and settled in the same process, handed over without NATS.

A perform publishes its event as an input with a `Reply-Inbox` and waits for the pipeline's
`InputReply` there (`worker.bus.submit`). Most of the time the worker that consumes the room's
shard is the very process that submitted it: publishing the reply, routing it through the
server and reading it back would cost both processes' CPU for a message that never leaves
this one. The submitters register each waiting future here under its inbox subject; the
settler (`worker.bus.settling`), at the point where it would publish the reply, resolves the
future instead when it finds the subject. A subject it does not find (the submitter is
another process or connection) gets the reply over NATS as before.

Inbox subjects embed the NATS connection's unique inbox prefix, so one registry can serve
every submitter of the process without two of them ever sharing a key.
"""

from __future__ import annotations

import asyncio

from worker.messages.reply import InputReply


class LocalReplies:
    """Futures waiting for an input's reply, by the input's `Reply-Inbox` subject."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[InputReply]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def register(self, inbox: str, future: asyncio.Future[InputReply]) -> None:
        """`future` waits for the reply to the input published with `inbox`; `forget` it
        once done with it."""
        self._waiting[inbox] = future

    def forget(self, inbox: str) -> None:
        self._waiting.pop(inbox, None)

    def deliver(self, inbox: str, reply: InputReply) -> bool:
        """Resolve the future waiting on `inbox`. True when the reply was taken here (the
        caller must not publish it then); False when nobody in this process waits on it.

        A future already done (a redelivered input answered again, or the waiter timed out
        and is being torn down) still counts as taken: its own subscription would drop the
        published reply just the same. A future of another event loop is left to NATS,
        since it cannot be resolved from this one."""
        future = self._waiting.get(inbox)
        if future is None:
            return False
        if future.get_loop() is not asyncio.get_running_loop():
            return False
        if not future.done():
            future.set_result(reply)
        return True


__all__ = ["LocalReplies"]
