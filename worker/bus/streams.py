"""The three streams as code: definitions, create-or-update in place, export for operators.

    python -m worker.bus streams DIR [--prefix roomserver] [--shards 4]

writes `DIR/<STREAM>.json`, each usable with `nats stream add --config DIR/<STREAM>.json`.

Choices (DESIGN §4, §6):

- **Input: limits retention, no limits, trimmed by the workers.** The input stream is a queue
  of jobs; what happened to each event is recorded in PostgreSQL (and, for failures, in the
  dead-letter stream), so a settled input has no further use. The worker that owns a shard
  purges the shard's messages below its consumer's ack floor every second or so
  (`worker.bus.trim`), which keeps the stream small and restarts fast however long the worker
  has run, and never drops an input not yet settled (Dendrite had to add a 24 h MaxAge, losing
  undelivered input). Not work-queue retention, which deletes each message on its ack: on a
  node that syncs every write, each such delete is a disk sync of its own, as many as the
  publishes, where a purge syncs once for all it removes. An input stream made with
  work-queue retention by an earlier version is kept as it is (JetStream cannot change that
  in place; it works the same, at the price of that sync per ack): to move it, stop the
  workers, let nothing publish, delete the stream once empty and start a worker. The shard
  consumers' filters are disjoint. Duplicate suppression by `Nats-Msg-Id` (= event ID) works
  the same under any retention.
- **Input subjects: `<prefix>.input.*` only**, transformed to `<prefix>.input.<shard>.<token>`.
  A publish to any other shape fails at the producer ("no responders") instead of being
  stored where no shard consumer would ever see it.
- **Output: limits retention** with a maximum age: several independent consumers (sync,
  federation sender, push, appservices) read it at their own pace and a new one may replay it.
- **Dead letters: limits retention** with a long maximum age, for an operator to read.
- File storage everywhere, a 2-minute duplicate window, messages up to 16 MiB.
- **Output: atomic batch publish allowed** (`allow_atomic`, ADR-50, nats-server 2.12+): the
  outbox relay publishes a room's pending outputs as one all-or-nothing batch and one round
  trip. Enabling it on an existing stream is an in-place update. On a server too old for it
  the relay falls back to one publish at a time (an older server may reject the setting, and
  then `ensure_streams` says so).

Streams are never deleted here. A changed setting is applied with a stream update; a change
that JetStream cannot apply in place (storage type, say) fails loudly with `PermanentError`
and leaves the stream and its messages alone; the one exception is the input stream's old
work-queue retention, kept as said above.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from worker.bus.subjects import Subjects
from worker.errors import PermanentError, RetryableError
from worker.observability.logging import get_logger

_log = get_logger(__name__)

MiB = 1024 * 1024
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """The deployment-specific knobs of the three streams."""

    shards: int = 4
    duplicate_window: float = 120.0
    max_msg_size: int = 16 * MiB
    # A dead letter carries the original body in base64 (4/3 larger) beside its reason.
    deadletter_max_msg_size: int = 24 * MiB
    output_max_age: float = 30 * DAY
    deadletter_max_age: float = 90 * DAY
    replicas: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 1024:
            raise ValueError(f"shards must be between 1 and 1024, got {self.shards}")


def _base(name: str, description: str, subjects: list[str], limits: StreamLimits) -> dict[str, Any]:
    # Every limit spelled out, so the exported files pass `nats stream add --config`
    # validation and a comparison with the server's view sees every field we care about.
    return {
        "name": name,
        "description": description,
        "subjects": subjects,
        "storage": StorageType.FILE,
        "num_replicas": limits.replicas,
        "discard": DiscardPolicy.OLD,
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_msgs_per_subject": -1,
        "duplicate_window": limits.duplicate_window,
    }


def stream_configs(subjects: Subjects, limits: StreamLimits) -> list[StreamConfig]:
    """The input, output and dead-letter stream definitions, in that order."""
    wildcard = subjects.input_wildcard
    input_ = StreamConfig(
        **_base(
            subjects.input_stream,
            "Roomserver input events, one shard per subject partition; trimmed once settled.",
            [wildcard],
            limits,
        ),
        retention=RetentionPolicy.LIMITS,
        max_age=0,
        max_msg_size=limits.max_msg_size,
        subject_transform=SubjectTransform(
            src=wildcard, dest=subjects.input_shard_transform(limits.shards)
        ),
    )
    output = StreamConfig(
        **_base(
            subjects.output_stream,
            "Roomserver outputs (new/old room events, invites, redactions, purges) per room.",
            [subjects.output_wildcard],
            limits,
        ),
        retention=RetentionPolicy.LIMITS,
        max_age=limits.output_max_age,
        max_msg_size=limits.max_msg_size,
        allow_atomic=True,
    )
    deadletter = StreamConfig(
        **_base(
            subjects.deadletter_stream,
            "Roomserver input messages given up on, with the original bytes and the reason.",
            [subjects.deadletter],
            limits,
        ),
        retention=RetentionPolicy.LIMITS,
        max_age=limits.deadletter_max_age,
        max_msg_size=limits.deadletter_max_msg_size,
    )
    return [input_, output, deadletter]


# --- comparing what we want with what the server has ----------------------------------------

_COMPARED = (
    "description",
    "subjects",
    "retention",
    "storage",
    "num_replicas",
    "discard",
    "max_consumers",
    "max_msgs",
    "max_bytes",
    "max_msgs_per_subject",
    "max_age",
    "max_msg_size",
    "duplicate_window",
    "subject_transform",
    "allow_atomic",
)


def _norm(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def differences(want: StreamConfig, have: StreamConfig) -> list[str]:
    """Names of the fields in which the server's stream differs from our definition."""
    return [f for f in _COMPARED if _field(want, f) != _field(have, f)]


# Flags the server leaves out when off (`omitempty`): absent and false are the same setting.
_FLAGS = frozenset({"allow_atomic"})


def _field(config: StreamConfig, name: str) -> Any:
    value = getattr(config, name)
    return bool(value) if name in _FLAGS else _norm(value)


StreamAction = Literal["created", "updated", "unchanged"]


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamAction:
    """Create the stream, or update it in place if it differs; never delete it. A stream with
    work-queue retention where we want limits keeps it (see the module docstring)."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return "created"
    if (
        info.config.retention == RetentionPolicy.WORK_QUEUE
        and config.retention == RetentionPolicy.LIMITS
    ):
        _log.warning(
            "stream_keeps_work_queue",
            stream=config.name,
            why="JetStream cannot change a stream's retention to or from work-queue in place; "
            "each ack costs a disk sync on a node that syncs every write",
        )
        config = dataclasses.replace(config, retention=RetentionPolicy.WORK_QUEUE)
    changed = differences(config, info.config)
    if not changed:
        return "unchanged"
    try:
        await js.update_stream(config)
    except ServiceUnavailableError as exc:
        raise RetryableError(f"JetStream unavailable: {exc!r}", code="nats_unavailable") from exc
    except APIError as exc:
        raise PermanentError(
            f"stream {config.name} differs from its definition in {', '.join(changed)} and "
            f"JetStream refused to update it in place ({exc.description}); it was left as "
            "it is: change it by hand (see deploy/nats/) or restore the old setting",
            code="stream_update_refused",
        ) from exc
    return "updated"


async def ensure_streams(
    js: JetStreamContext, subjects: Subjects, limits: StreamLimits
) -> dict[str, StreamAction]:
    """Create or update the three streams; returns what was done to each, by name."""
    done: dict[str, StreamAction] = {}
    for config in stream_configs(subjects, limits):
        assert config.name is not None
        done[config.name] = await ensure_stream(js, config)
    return done


# --- export -------------------------------------------------------------------------------


def export_json(config: StreamConfig) -> str:
    """The stream as `nats stream add --config` reads it (JetStream API JSON, durations in ns)."""
    return json.dumps(config.as_dict(), indent=2, sort_keys=True) + "\n"


def export(directory: Path, subjects: Subjects, limits: StreamLimits) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for config in stream_configs(subjects, limits):
        path = directory / f"{config.name}.json"
        path.write_text(export_json(config), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.bus streams")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--prefix", default="roomserver")
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args(argv)
    for path in export(args.directory, Subjects(args.prefix), StreamLimits(shards=args.shards)):
        print(path)
    return 0
