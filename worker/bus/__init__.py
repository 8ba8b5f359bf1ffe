"""The JetStream side of the worker (DESIGN §4-§6): streams, the input consumer with its
per-room dispatch and the one table of message fates, dead letters, the outbox relay, and a
producer helper.
"""

from worker.bus.consumer import ConsumerSettings, InputConsumer, InputHandler
from worker.bus.deadletter import DeadLetterWriter
from worker.bus.dispatch import RoomDispatcher
from worker.bus.outbox import NatsOutboxRelay, OutboxRow, OutboxStore, PgOutboxStore
from worker.bus.producer import input_headers, publish_input, send_input
from worker.bus.settle import AckAction, Fate, RetryPolicy, Situation
from worker.bus.streams import StreamLimits, ensure_stream, ensure_streams, stream_configs
from worker.bus.subjects import SubjectError, Subjects, room_id_from_token, room_token

__all__ = [
    "AckAction",
    "ConsumerSettings",
    "DeadLetterWriter",
    "Fate",
    "InputConsumer",
    "InputHandler",
    "NatsOutboxRelay",
    "OutboxRow",
    "OutboxStore",
    "PgOutboxStore",
    "RetryPolicy",
    "RoomDispatcher",
    "Situation",
    "StreamLimits",
    "SubjectError",
    "Subjects",
    "ensure_stream",
    "ensure_streams",
    "input_headers",
    "publish_input",
    "room_id_from_token",
    "room_token",
    "send_input",
    "stream_configs",
]
