"""Carrying out a message's fate (`worker.bus.settle`): dead letter, then the action on
the message, then the reply to the producer.

`Settler` is the input consumer's hands: the consumer decides (through `settle`) and keeps
its own books of held messages; the settler does the I/O of a decision. A reply whose
`Reply-Inbox` a submitter of this process waits on (`worker.bus.local_replies`) is handed to
it directly, at the point where it would be published. It calls back into
the consumer through two callables: `leave_window` once a message's outcome is decided (its
shard may fetch the next one) and `release` once it is settled.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from worker.bus import settle
from worker.bus.ack_confirm import AckConfirmations
from worker.bus.deadletter import DeadLetterWriter
from worker.bus.delivery import Delivery
from worker.bus.local_replies import LocalReplies
from worker.bus.requests import Requester
from worker.bus.subjects import SubjectError, Subjects
from worker.errors import InvariantViolation, RetryableError
from worker.messages.reply import InputReply, encode_reply
from worker.observability.logging import get_logger
from worker.observability.metrics import SettleAction, count_settle

_log = get_logger(__name__)
# How long an ack's confirmation may take. nats-py's default (1 s) is shorter than a
# loaded worker's event loop can take to read the answer, and a confirmation given up on
# is only a warning and a redelivery later; the ack has most likely landed.
_ACK_CONFIRM_TIMEOUT = 5.0

_ACTION_LABEL: dict[settle.AckAction, SettleAction] = {
    settle.AckAction.ACK: "ack",
    settle.AckAction.NAK: "nak",
    settle.AckAction.TERM: "term",
}


class Settler:
    """Settles the input consumer's messages (see the module docstring)."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        retry: settle.RetryPolicy,
        *,
        leave_window: Callable[[Delivery], None],
        release: Callable[[Delivery], None],
        local_replies: LocalReplies | None = None,
    ) -> None:
        self._nc = nc
        self._local = local_replies
        self._subjects = subjects
        self._retry = retry
        self._requests = Requester(nc)
        self._confirmations = AckConfirmations(self._ack_confirmed)
        self.deadletters = DeadLetterWriter(nc.jetstream(), subjects, max_payload=nc.max_payload)
        self._leave_window = leave_window
        self._release = release

    async def ack_all(self, acked: list[tuple[Delivery, settle.Fate]]) -> None:
        """Ack a batch's messages, then reply to each. A room's messages are all of one
        shard, and JetStream applies one consumer's acks in the order they arrive: only the
        last ack needs its confirmation (a round trip) for all of them to have landed
        before any reply goes out, as with one `carry_out` each."""
        last = len(acked) - 1
        for d, _ in acked:
            self._leave_window(d)
        sent = 0
        try:
            for i, (d, _) in enumerate(acked):
                if d.settled:
                    continue
                try:
                    await (self._confirmations.confirm(d.shard, d.msg) if i == last
                           else d.msg.ack())
                    sent += 1
                except (NatsError, JetStreamError) as exc:
                    # Redelivered then, and answered as a duplicate: harmless.
                    _log.warning("settle_failed", action="ack", error=repr(exc))
                self._release(d)
        finally:
            # Counted once for the batch (a labelled inc takes a lock).
            count_settle("ack", sent)
        for d, fate in acked:
            if fate.reply is not None and d.reply_inbox:
                await self._reply(d.reply_inbox, fate.reply)

    async def _ack_confirmed(self, msg: Msg) -> None:
        """Ack and wait for JetStream to confirm it (nats-py's `ack_sync`, by `Requester`)."""
        if not msg.reply:
            raise NatsError("the message has no reply subject to ack")
        await self._requests.request(msg.reply, b"+ACK", timeout=_ACK_CONFIRM_TIMEOUT)

    async def carry_out(self, d: Delivery, fate: settle.Fate) -> None:
        """Dead letter, then the ack action, then the reply (see `worker.bus.settle`)."""
        if d.settled:
            return
        msg = d.msg
        if fate.dead_letter:
            try:
                await self.deadletters.write(
                    subject=self._published_subject(msg.subject),
                    headers=msg.headers,
                    body=msg.data,
                    reason_code=fate.reason_code,
                    reason=fate.reason,
                    delivery_count=d.delivery,
                    stream=self._subjects.input_stream,
                    stream_sequence=d.stream_sequence,
                )
            except RetryableError as exc:
                _log.error("deadletter_failed", error=str(exc))
                fate = settle.of_deadletter_failure(
                    delivery=d.delivery, policy=self._retry
                )
        self._leave_window(d)
        try:
            if fate.action is settle.AckAction.ACK:
                await self._confirmations.confirm(d.shard, msg)
            elif fate.action is settle.AckAction.NAK:
                # A delay of 0 would mean "use the consumer's back-off" to JetStream; a
                # hand-back at shutdown should be redelivered at once.
                await msg.nak(delay=max(fate.delay, 0.001))
            elif fate.action is settle.AckAction.TERM:
                await msg.term()
            else:
                raise InvariantViolation(f"{fate.action} is not a way to settle a message")
            count_settle(_ACTION_LABEL[fate.action])
        except (NatsError, JetStreamError) as exc:
            # The message will be redelivered; handling is idempotent, so that is harmless.
            _log.warning("settle_failed", action=fate.action.value, error=repr(exc))
        self._release(d)
        if fate.reply is not None and d.reply_inbox:
            await self._reply(d.reply_inbox, fate.reply)

    async def _reply(self, inbox: str, reply: InputReply) -> None:
        # A perform of this process waits on it: hand it over without the round trip.
        if self._local is not None and self._local.deliver(inbox, reply):
            return
        try:
            await self._nc.publish(inbox, encode_reply(reply))
        except (NatsError, JetStreamError) as exc:
            _log.warning("reply_failed", inbox=inbox, error=repr(exc))

    def _published_subject(self, stored: str) -> str:
        """The subject the producer used (before the stream's shard transform)."""
        try:
            _, token = self._subjects.parse_stored_input(stored)
        except SubjectError:
            return stored
        return f"{self._subjects.prefix}.input.{token}"
