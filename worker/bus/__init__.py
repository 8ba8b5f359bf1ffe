"""The JetStream side of the worker (DESIGN §4-§6). Imported by `worker.app` (which wires
it) and by the commands; it imports the core, the messages and, for its PostgreSQL parts
(`outbox_store`, `leases`, the room fence in `shards`), storage.

- `streams`, `subjects`: the three streams, their subjects and room tokens.
- `consumer`: the input consumer (shards → per-room queues → the handler → settlement), with
  `consumer_settings` (its tuning), `handler` (the port the pipeline implements), `delivery`
  (a held message and its ack subject), `pull` (one-await fetches), `dispatch` (per-room
  queues), `settle` (the one table of message fates), `settling` (carrying a fate out) and
  `trim` (purging the settled inputs from the stream).
- `deadletter`: the dead-letter stream's writer.
- `outbox`: the relay publishing committed outputs; `outbox_store`: the rows it reads.
- `leases`, `shards`: which worker consumes which shard, and the room fence.
- `producer`, `requests`: publishing inputs, and request/reply for the hot paths.
- `submit`, `local_replies`: the performs' inputs, and their replies handed over in process
  when this process settles them.
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
