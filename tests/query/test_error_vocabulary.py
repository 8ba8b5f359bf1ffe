"""Every endpoint of the micro service `roomserver`, as `worker.app` starts it, answers a
failure in the one vocabulary of DESIGN §4 (`worker.messages.errors`): the stable code in the
`Roomserver-Error` header and in the body, and the status that code maps to."""

from __future__ import annotations

import json
from typing import Any

import nats

from worker.app import Worker
from worker.messages import admin
from worker.messages.errors import ERROR_CODE_HEADER, ERROR_CODES, ERROR_STATUS
from worker.perform.service import PERFORM_HANDLERS, QUERY_HANDLERS
from worker.query.handlers import HANDLERS
from worker.query.homeserver import HOMESERVER_HANDLERS

SERVER = "hs.test"
ROOM = f"!unknown:{SERVER}"
# One body for every endpoint: request Structs ignore the fields they do not have, so each
# finds the ones it needs, all naming things this roomserver does not know.
UNKNOWN: dict[str, Any] = {
    "room_id": ROOM, "room_ids": [ROOM], "room_id_or_alias": ROOM,
    "event_id": "$unknown", "event_ids": ["$unknown"], "earliest_events": ["$unknown"],
    "latest_events": ["$unknown"], "user_id": f"@nobody:{SERVER}",
    "sender": f"@nobody:{SERVER}", "alias": f"#nothing:{SERVER}", "server_name": "other.test",
    "type": "m.room.message", "content": {"body": "x"}, "new_version": "12",
    "before_ts": 1, "visibility": "public",
}
# Endpoints whose answer to UNKNOWN must be `not_found`: a room or alias nobody knows.
NOT_FOUND = {
    "room_version", "latest_events_and_state", "memberships_for_room",
    "joined_user_count", "room_hierarchy", "aliases_for_room", "room_for_alias",
    "perform_send_event", "perform_upgrade", "perform_purge_room", "perform_purge_history",
    "perform_evacuate_room", "perform_set_alias",
}


async def _ask(nc: Any, subject: str, data: bytes) -> tuple[str, str, dict[str, Any]]:
    """(status, stable code, body) of an error answer; ("", "", body) of a success."""
    msg = await nc.request(subject, data, timeout=60)
    body: dict[str, Any] = json.loads(msg.data) if msg.data else {}
    headers = msg.headers or {}
    return headers.get("Nats-Service-Error-Code", ""), headers.get(ERROR_CODE_HEADER, ""), body


def _check(endpoint: str, status: str, code: str, body: dict[str, Any]) -> None:
    assert code in ERROR_CODES, (endpoint, code, body)
    assert status == ERROR_STATUS[code], (endpoint, status, code)
    assert body["code"] == code, (endpoint, body)
    assert body["message"], endpoint


async def test_every_endpoint_answers_in_the_vocabulary(
    app_worker: Worker, nats_url: str
) -> None:
    worker = app_worker
    assert worker.queries is not None and worker.queries.service is not None
    endpoints = {e.name: e.subject for e in worker.queries.service.info().endpoints}
    # Every endpoint the registries declare is served, and nothing else: a new registry
    # of endpoints is walked here too.
    declared = {*HANDLERS, *HOMESERVER_HANDLERS, *QUERY_HANDLERS}
    declared |= {f"perform_{n}" for n in [*PERFORM_HANDLERS, *admin.PURGE_PERFORMS]}
    assert declared <= set(endpoints)
    assert {"perform_evacuate_room", "perform_evacuate_user"} <= set(endpoints)
    nc = await nats.connect(nats_url)
    try:
        seen: dict[str, str] = {}
        for name, subject in sorted(endpoints.items()):
            # Not JSON at all.
            status, code, body = await _ask(nc, subject, b"{not json")
            _check(name, status, code, body)
            assert code == "bad_request", (name, body)
            # JSON naming what nobody knows: a success (an empty answer where the question
            # allows one) or an error in the vocabulary.
            status, code, body = await _ask(nc, subject, json.dumps(UNKNOWN).encode())
            if status:
                _check(name, status, code, body)
            seen[name] = code
        wrong = {n: seen[n] for n in NOT_FOUND if seen.get(n) != "not_found"}
        assert not wrong, wrong
    finally:
        await nc.close()
