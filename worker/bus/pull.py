"""Fetching a batch from a JetStream pull consumer with one await, not one per message.

nats-py's `PullSubscription.fetch` takes each message of a batch with `next_msg`, which starts
two tasks per message (and draws a uuid4); on a busy event loop every one of them waits for
a full turn of the loop, so under load a fetch of a whole batch keeps the shard's rooms idle
for many turns. The messages of a batch arrive together and the client's reader puts them
all in the subscription's queue: `fetch` here waits for the first one only and takes the
rest that are already there.

Same contract as nats-py's: at least one message, at most `batch`, in stream order, or
`nats.errors.TimeoutError` when none came within `timeout`; a status other than "no
messages", "request timeout", "conflict" or a heartbeat raises `APIError`. Messages of an
earlier request that arrive late (the client gave up on it first) are taken by the next
call, as nats-py does.

It reads private attributes of nats-py's subscription (`PRIVATE_ATTRIBUTES`): pyproject.toml
pins nats-py to the minor series they were checked against, and `private_parts` raises
`UnsupportedClient` when one is missing, so a nats-py that changed them fails loudly (its
test, and the consumer's first fetch) instead of quietly taking a slower path.
"""

from __future__ import annotations

import asyncio
import json
from importlib.metadata import version
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

# Statuses that mean "nothing for this request (now)", and the idle heartbeat.
_NOTHING = frozenset({"404", "408", "409"})
_HEARTBEAT = "100"


# What this module reads of nats-py: the pull subscription's connection, its request subject
# and inbox, and its inner subscription's message queue and pending-bytes count.
PRIVATE_ATTRIBUTES = {
    "PullSubscription": ("_nc", "_nms", "_deliver", "_sub"),
    "Subscription": ("_pending_queue", "_pending_size"),
}


class UnsupportedClient(RuntimeError):
    """The installed nats-py lacks an attribute this module reads."""


def private_parts(sub: JetStreamContext.PullSubscription) -> tuple[Any, asyncio.Queue[Msg]]:
    """The inner subscription and its message queue; `UnsupportedClient` if nats-py's
    private attributes are not what this module reads."""
    missing = [f"PullSubscription.{a}" for a in PRIVATE_ATTRIBUTES["PullSubscription"]
               if not hasattr(sub, a)]
    inner: Any = getattr(sub, "_sub", None)
    missing += [f"Subscription.{a}" for a in PRIVATE_ATTRIBUTES["Subscription"]
                if not hasattr(inner, a)]
    queue = getattr(inner, "_pending_queue", None)
    if missing or not isinstance(queue, asyncio.Queue):
        if not missing:
            missing.append("Subscription._pending_queue as an asyncio.Queue")
        raise UnsupportedClient(
            f"nats-py {version('nats-py')} lacks {', '.join(missing)}: worker.bus.pull reads them"
        )
    return inner, queue


async def fetch(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    inner, queue = private_parts(sub)
    msgs = _take(inner, queue, batch)
    if msgs:
        return msgs
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # What is there now, at once: `no_wait` without `expires` (with it the server would
    # linger), answered by the messages and, if fewer than asked for, "no messages".
    await _request(sub, {"batch": batch, "no_wait": True})
    first = await _first(inner, queue, deadline - loop.time())
    if first is None:
        remaining = deadline - loop.time()
        if remaining <= 0.001:
            raise nats.errors.TimeoutError
        # Then wait for new ones; the server lets the request expire just before we do.
        await _request(sub, {"batch": batch, "expires": int(remaining * 1e9) - 100_000})
        first = await _first(inner, queue, remaining)
        if first is None:
            raise nats.errors.TimeoutError
    return [first, *_take(inner, queue, batch - 1)]


async def _request(sub: JetStreamContext.PullSubscription, request: dict[str, object]) -> None:
    await sub._nc.publish(sub._nms, json.dumps(request).encode(), sub._deliver)


async def _first(inner: Any, queue: asyncio.Queue[Msg], timeout: float) -> Msg | None:
    """The next message within `timeout`; None for a "nothing" status or no answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            msg = await asyncio.wait_for(queue.get(), remaining)
        except TimeoutError:
            return None
        _taken(inner, msg)
        status = _status(msg)
        if status is None:
            return msg
        if status == _HEARTBEAT:
            continue
        if status in _NOTHING:
            return None
        raise nats.js.errors.APIError.from_msg(msg)


def _take(inner: Any, queue: asyncio.Queue[Msg], n: int) -> list[Msg]:
    """Up to `n` messages already received, without waiting; statuses there are answers to
    requests already over, and are skipped."""
    out: list[Msg] = []
    while len(out) < n and not queue.empty():
        msg = queue.get_nowait()
        _taken(inner, msg)
        if _status(msg) is None:
            out.append(msg)
    return out


def _taken(inner: Any, msg: Msg) -> None:
    # Keep the client's slow-consumer accounting right, as its own next_msg does.
    inner._pending_size -= len(msg.data)


def _status(msg: Msg) -> str | None:
    headers = msg.headers
    if not headers:
        return None
    status = headers.get("Status")
    return str(status) if status is not None else None


__all__ = ["PRIVATE_ATTRIBUTES", "UnsupportedClient", "fetch", "private_parts"]
