"""worker.bus: the JetStream side of the worker (DESIGN §4-§6).

Streams (`streams`, `subjects`), the input consumer with its per-room dispatch and the one
table of message fates (`consumer`, `dispatch`, `settle`, `pull`), shard leases and shard
arithmetic (`leases`, `shards`), dead letters, the outbox relay (`outbox`, over the
`OutboxStore` port it declares), request/reply helpers and a producer helper.

Who may import it: `worker.app` (which wires it to the pipeline and to storage), the
commands and tests. It imports the pipeline's ports, the messages and the core, never
`worker.storage` (whose outbox adapter reaches the relay through its port), the federation
adapter or the app (an import-linter contract).
"""

from worker.bus.consumer import ConsumerSettings, InputConsumer, InputHandler
from worker.bus.deadletter import DeadLetterWriter
from worker.bus.dispatch import RoomDispatcher
from worker.bus.outbox import NatsOutboxRelay, OutboxRow, OutboxStore
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
