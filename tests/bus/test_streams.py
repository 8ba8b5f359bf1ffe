"""Streams as code against the embedded NATS: create, update in place, export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy, StorageType
from nats.js.errors import NoStreamResponseError

from tests.bus.conftest import SHARDS
from worker.bus import streams
from worker.bus.streams import StreamLimits, ensure_stream, ensure_streams, stream_configs
from worker.bus.subjects import Subjects
from worker.errors import PermanentError


async def test_create_then_unchanged_then_update_in_place(nc: NATS, streams: Subjects) -> None:
    js = nc.jetstream()
    limits = StreamLimits(shards=SHARDS)
    assert set((await ensure_streams(js, streams, limits)).values()) == {"unchanged"}

    for i in range(3):
        await js.publish(streams.output(f"!room{i}:x"), b"{}", stream=streams.output_stream)
    changed = dataclasses.replace(limits, output_max_age=3600.0, duplicate_window=60.0)
    done = await ensure_streams(js, streams, changed)
    assert done[streams.output_stream] == "updated"
    info = await js.stream_info(streams.output_stream)
    assert info.config.max_age == 3600.0 and info.config.duplicate_window == 60.0
    assert info.state.messages == 3  # kept: updated, never recreated


async def test_input_stream_shards_rooms_by_subject(nc: NATS, streams: Subjects) -> None:
    js = nc.jetstream()
    rooms = [f"!r{i}:example.org" for i in range(12)]
    for room in rooms:
        await js.publish(streams.input(room), b"{}", stream=streams.input_stream)
    info = await js.stream_info(streams.input_stream, subjects_filter=">")
    stored = info.state.subjects or {}
    shards = {streams.parse_stored_input(s)[0] for s in stored}
    assert shards <= set(range(SHARDS)) and len(stored) == 12
    # The same room always lands on the same shard.
    await js.publish(streams.input(rooms[0]), b"{}", stream=streams.input_stream)
    info = await js.stream_info(streams.input_stream, subjects_filter=">")
    assert len(info.state.subjects or {}) == 12
    # Malformed input subjects are refused at the producer instead of being stranded.
    with pytest.raises(NoStreamResponseError):
        await js.publish(f"{streams.prefix}.input.a.b", b"{}", timeout=0.5)


async def test_update_that_jetstream_refuses_fails_loudly(nc: NATS, streams: Subjects) -> None:
    js = nc.jetstream()
    config = stream_configs(streams, StreamLimits(shards=SHARDS))[0]
    await js.publish(streams.input("!a:x"), b"{}", stream=streams.input_stream)
    # File to memory storage is not allowed in place: report it, keep the stream.
    bad = dataclasses.replace(config, storage=StorageType.MEMORY)
    with pytest.raises(PermanentError) as info:
        await ensure_stream(js, bad)
    assert info.value.code == "stream_update_refused"
    assert "storage" in str(info.value)
    assert (await js.stream_info(streams.input_stream)).state.messages == 1


async def test_a_work_queue_input_stream_is_kept_and_updated_otherwise(
    nc: NATS, subjects: Subjects
) -> None:
    # As an earlier version made it: JetStream cannot move it to limits retention in place.
    js = nc.jetstream()
    config = stream_configs(subjects, StreamLimits(shards=SHARDS))[0]
    assert config.retention == RetentionPolicy.LIMITS
    old = dataclasses.replace(config, retention=RetentionPolicy.WORK_QUEUE, duplicate_window=60.0)
    await js.add_stream(old)
    try:
        await js.publish(subjects.input("!a:x"), b"{}", stream=subjects.input_stream)
        assert await ensure_stream(js, config) == "updated"
        info = await js.stream_info(subjects.input_stream)
        assert info.config.retention == RetentionPolicy.WORK_QUEUE
        assert info.config.duplicate_window == 120.0  # the rest is ours
        assert info.state.messages == 1
        assert await ensure_stream(js, config) == "unchanged"
    finally:
        await js.delete_stream(subjects.input_stream)


async def test_exported_definitions_create_the_same_streams(nc: NATS, prefix: str, tmp_path: Path) -> None:
    # `nats stream add --config FILE` sends the file to $JS.API.STREAM.CREATE.<name>; do that.
    subjects = Subjects(prefix + "x")
    paths = streams.export(tmp_path, subjects, StreamLimits(shards=3))
    assert [p.name for p in paths] == [
        f"{subjects.input_stream}.json",
        f"{subjects.output_stream}.json",
        f"{subjects.deadletter_stream}.json",
    ]
    js = nc.jetstream()
    try:
        for path in paths:
            body = path.read_bytes()
            name = json.loads(body)["name"]
            resp = json.loads((await nc.request(f"$JS.API.STREAM.CREATE.{name}", body)).data)
            assert "error" not in resp, resp
        done = await ensure_streams(js, subjects, StreamLimits(shards=3))
        assert set(done.values()) == {"unchanged"}
    finally:
        for path in paths:
            await js.delete_stream(path.stem)


def test_committed_deploy_files_match_the_code() -> None:
    root = Path(__file__).resolve().parents[2] / "deploy" / "nats"
    for config in stream_configs(Subjects("roomserver"), StreamLimits()):
        assert (root / f"{config.name}.json").read_text() == streams.export_json(config)
