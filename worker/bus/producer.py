"""Publishing `InputRoomEvent`s the way the contract says (DESIGN §4): for tests, the CLI's
`send`, benchmarks, and as the reference for producers in other services.

The subject is `<prefix>.input.<room token>`, the `Room-ID` header carries the room ID, and
`Nats-Msg-Id` is the event ID so JetStream drops a re-publish within the duplicate window.
`send_input` also asks for a reply and waits for the roomserver's verdict.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import PubAck

from worker.bus.subjects import MSG_ID_HEADER, REPLY_INBOX_HEADER, ROOM_ID_HEADER, Subjects
from worker.messages.input import InputRoomEvent, encode_input
from worker.messages.reply import InputReply, decode_reply


# Only the two routing keys are read; the rest of the PDU stays undecoded.
class _Ids(msgspec.Struct):
    room_id: Any = None
    event_id: Any = None


_IDS_DECODER = msgspec.json.Decoder(_Ids)


def _ids_of(message: InputRoomEvent) -> tuple[str | None, str | None]:
    try:
        ids = _IDS_DECODER.decode(message.event)
    except msgspec.DecodeError:
        return None, None
    room_id = ids.room_id if isinstance(ids.room_id, str) else None
    event_id = ids.event_id if isinstance(ids.event_id, str) else None
    return room_id, event_id


def input_headers(
    message: InputRoomEvent,
    *,
    room_id: str | None = None,
    event_id: str | None = None,
    reply_inbox: str | None = None,
) -> tuple[str, dict[str, str]]:
    """(room ID, headers) for an input; IDs not given are read from the PDU.

    A room version 12 create event has no `room_id` and events of room versions 3+ carry no
    `event_id`: pass them explicitly (without an event ID there is no duplicate suppression).
    """
    pdu_room, pdu_event = _ids_of(message)
    room_id = room_id or pdu_room
    if not room_id:
        raise ValueError("the event names no room_id: pass room_id explicitly")
    headers = {ROOM_ID_HEADER: room_id}
    if event_id or pdu_event:
        headers[MSG_ID_HEADER] = event_id or pdu_event or ""
    if reply_inbox:
        headers[REPLY_INBOX_HEADER] = reply_inbox
    return room_id, headers


async def publish_input(
    nc: NATS,
    subjects: Subjects,
    message: InputRoomEvent,
    *,
    room_id: str | None = None,
    event_id: str | None = None,
    reply_inbox: str | None = None,
    timeout: float = 5.0,
) -> PubAck:
    """Publish one input and wait for JetStream to store it (`PubAck.duplicate` if dropped)."""
    room_id, headers = input_headers(
        message, room_id=room_id, event_id=event_id, reply_inbox=reply_inbox
    )
    return await nc.jetstream().publish(
        subjects.input(room_id),
        encode_input(message),
        timeout=timeout,
        stream=subjects.input_stream,
        headers=headers,
    )


async def send_input(
    nc: NATS,
    subjects: Subjects,
    message: InputRoomEvent,
    *,
    room_id: str | None = None,
    event_id: str | None = None,
    timeout: float = 30.0,
) -> InputReply:
    """Publish one input with a `Reply-Inbox` and wait for the roomserver's reply.

    Raises `TimeoutError` when no reply came within `timeout` (the input may still be
    processed later: it is in the stream).
    """
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await publish_input(
            nc, subjects, message, room_id=room_id, event_id=event_id, reply_inbox=inbox
        )
        # nats' TimeoutError is a subclass of the built-in one.
        msg = await sub.next_msg(timeout=timeout)
        return decode_reply(msg.data)
    finally:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()


__all__ = ["input_headers", "publish_input", "send_input"]
