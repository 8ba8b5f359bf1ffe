"""The auth rules never raise, whatever the JSON: every input gives None or a Rejection.

Format validation (worker.core.format) runs first in the pipeline, but the rules are also run
by state resolution and the CLI on events from anywhere, so they must be total functions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.builder import RoomBuilder
from worker.core.auth import (
    auth_types_for_event,
    check_auth,
    check_auth_event_list,
    check_soft_fail,
)
from worker.core.events import Event
from worker.core.outcomes import Rejection
from worker.core.versions import rules_for

USERS = ["@alice:test", "@bob:test", "@dave:other.example", "bob", "", "@x"]
KEYS = [
    "membership", "join_authorised_via_users_server", "third_party_invite", "signed", "mxid",
    "token", "signatures", "users", "events", "notifications", "ban", "kick", "invite",
    "redact", "users_default", "events_default", "state_default", "creator",
    "additional_creators", "room_version", "m.federate", "join_rule", "public_key",
    "public_keys", "redacts",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["join", "invite", "leave", "ban", "knock", "public", "restricted"]),
    st.sampled_from(USERS),
    st.sampled_from(["50", " +7 ", "tok", "9" * 5000, "ed25519:0", "AAAA"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.sampled_from(USERS)), inner, max_size=5
        ),
    ),
    max_leaves=20,
)
contents = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)
event_types = st.sampled_from(
    [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.third_party_invite",
        "m.room.aliases",
        "m.room.redaction",
        "m.room.message",
    ]
)


def _room(version: str) -> RoomBuilder:
    b = RoomBuilder(version)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={} if version == "12" else {"alice": 100})
    b.join_rules("alice", "restricted")
    b.join("@dave:other.example", join_authorised_via_users_server="@alice:test")
    b.state_event("m.room.third_party_invite", "tok", {"public_key": "AAAA"}, "alice")
    return b


ROOMS = {str(v): _room(str(v)) for v in range(1, 13)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from(sorted(ROOMS)),
    event_type=event_types,
    sender=st.sampled_from(USERS),
    state_key=st.one_of(st.none(), st.sampled_from(["", *USERS, "test", "tok"])),
    content=contents,
    extra=st.dictionaries(st.sampled_from(["redacts", "prev_events", "room_id"]), json_values),
)
def test_rules_never_raise(
    version: str,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: dict[str, Any],
    extra: dict[str, Any],
) -> None:
    b = ROOMS[version]
    rules = rules_for(version)
    assert rules is not None
    pdu: dict[str, Any] = {
        "type": event_type,
        "sender": sender,
        "content": content,
        "room_id": b.room_id,
        "prev_events": b._refs(b.latest),
        "signatures": {"test": {"ed25519:a": "x"}},
        **extra,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    ev = Event(pdu, "$fuzz:test", rules)
    keys = auth_types_for_event(ev)
    assert keys == auth_types_for_event(ev)
    state = b.state_events()
    listed = [state[k] for k in keys if k in state]
    for result in (
        check_auth_event_list(ev, listed),
        check_auth(ev, state),
        check_auth(
            ev,
            {k: state[k] for k in keys if k in state}
            | {("m.room.create", ""): state[("m.room.create", "")]},
        ),
    ):
        assert result is None or isinstance(result, Rejection)
        if result is not None:
            assert result.code and result.code == result.code.lower() and result.reason
    soft = check_soft_fail(ev, state)
    direct = check_auth(ev, state)
    assert (soft is None) == (direct is None)
    if soft is not None and direct is not None:
        assert soft.code == "soft_failed_" + direct.code


_VERDICTS_SCRIPT = """
import json, random
from tests.fixtures.builder import RoomBuilder
users = ["alice", "bob", "carol", "@dave:other.example"]
out = []
for version in [str(v) for v in range(1, 13)]:
    rng = random.Random("hashseed-" + version)
    b = RoomBuilder(version)
    b.create("alice", **({"additional_creators": ["@bob:test"]} if version == "12" else {}))
    b.join("alice")
    for _ in range(150):
        s, t = rng.choice(users), rng.choice(users)
        pick = rng.random()
        if pick < 0.5:
            m = rng.choice(["join", "invite", "leave", "ban", "knock"])
            eid = b.member(s, t, m, apply=False)
        elif pick < 0.7:
            levels = {u: rng.choice([0, 50, 100]) for u in rng.sample(users, 2)}
            eid = b.power_levels(s, users=levels, ban=rng.choice([50, 75]), apply=False)
        elif pick < 0.8:
            eid = b.join_rules(s, rng.choice(["public", "invite", "knock"]), apply=False)
        else:
            eid = b.message(s)
        failure = b.check(eid)
        if failure is None and b.event(eid).state_tuple is not None:
            b.state[b.event(eid).state_tuple] = eid
        out.append([eid, None if failure is None else [failure.code, failure.reason, failure.rule]])
print(json.dumps(out))
"""


def test_verdicts_do_not_depend_on_hash_seed() -> None:
    """Codes, reasons and rule names are the same under different PYTHONHASHSEED (STYLE R9)."""
    root = Path(__file__).resolve().parents[2]
    outputs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _VERDICTS_SCRIPT],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env=env,
        )
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) > 1000
