"""Rule 5 (rule 4 in v8-v11): m.room.member, one accept and one reject case per step and
per version family where the step differs. Rule names: see worker/core/auth/common.py."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from nacl.signing import SigningKey

from tests.core.auth_rooms import code
from tests.fixtures.builder import RoomBuilder
from worker.core.canonical import encode_canonical

ALL = [str(v) for v in range(1, 13)]
PRE_V7 = [str(v) for v in range(1, 7)]
V7_PLUS = [str(v) for v in range(7, 13)]
PRE_V8 = [str(v) for v in range(1, 8)]
V8_PLUS = [str(v) for v in range(8, 13)]
V10_PLUS = ["10", "11", "12"]


def room(version: str, join_rule: str | None = "public", **levels: Any) -> RoomBuilder:
    """alice creates and joins; power levels give alice 100 (v12: alice is the creator)."""
    b = RoomBuilder(version)
    b.create("alice")
    b.join("alice")
    users = {} if version == "12" else {"alice": 100}
    users.update(levels.pop("users", {}))
    b.power_levels("alice", users=users, **levels)
    if join_rule is not None:
        b.join_rules("alice", join_rule)
    return b



def rule(b: RoomBuilder, event_id: str) -> str:
    failure = b.check(event_id)
    assert failure is not None
    return failure.rule


# -- 5.1 and 5.2 ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_member_without_membership_rejected(version: str) -> None:
    b = room(version)
    eid = b.add("m.room.member", "bob", {}, state_key="@bob:test")
    assert code(b, eid) == "bad_membership"


@pytest.mark.parametrize("version", ALL)
def test_member_without_state_key_rejected(version: str) -> None:
    b = room(version)
    eid = b.add("m.room.member", "bob", {"membership": "join"})
    assert code(b, eid) == "bad_membership"


@pytest.mark.parametrize("version", ALL)
def test_unknown_membership_rejected(version: str) -> None:
    b = room(version)
    assert code(b, b.member("alice", "bob", "dance")) == "unknown_membership"


@pytest.mark.parametrize("version", V8_PLUS)
def test_authorised_join_needs_authoriser_signature(version: str) -> None:
    b = room(version, "restricted")
    eid = b.join("bob", join_authorised_via_users_server="@alice:test")
    assert code(b, eid) is None
    b.edit(eid, signatures={"elsewhere": {"ed25519:x": "s"}})
    assert code(b, eid) == "missing_authoriser_signature"


@pytest.mark.parametrize("version", PRE_V8)
def test_authoriser_signature_not_checked_before_v8(version: str) -> None:
    b = room(version)
    eid = b.join("bob", join_authorised_via_users_server="@carol:elsewhere")
    b.edit(eid, signatures={"test": {"ed25519:x": "s"}})
    assert code(b, eid) is None


# -- 5.3 join ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_creator_first_join_allowed(version: str) -> None:
    b = RoomBuilder(version)
    b.create("alice")
    assert code(b, b.join("alice")) is None


@pytest.mark.parametrize("version", ALL)
def test_non_creator_first_join_rejected(version: str) -> None:
    b = RoomBuilder(version)
    b.create("alice")
    assert code(b, b.join("bob")) == "join_rule_forbids"


@pytest.mark.parametrize("version", [str(v) for v in range(1, 11)])
def test_first_join_uses_content_creator_before_v11(version: str) -> None:
    b = RoomBuilder(version)
    b.create("alice", creator="@bob:test")
    assert code(b, b.join("bob")) is None
    b2 = RoomBuilder(version)
    b2.create("alice", creator="@bob:test")
    assert code(b2, b2.join("alice")) == "join_rule_forbids"


@pytest.mark.parametrize("version", ["11", "12"])
def test_first_join_uses_create_sender_from_v11(version: str) -> None:
    b = RoomBuilder(version)
    b.create("alice", creator="@bob:test")
    assert code(b, b.join("alice")) is None
    b2 = RoomBuilder(version)
    b2.create("alice", creator="@bob:test")
    assert code(b2, b2.join("bob")) == "join_rule_forbids"


def test_v12_additional_creator_has_no_first_join_privilege() -> None:
    b = RoomBuilder("12")
    b.create("alice", additional_creators=["@bob:test"])
    assert code(b, b.join("bob")) == "join_rule_forbids"


@pytest.mark.parametrize("version", ALL)
def test_creator_join_must_follow_create_directly(version: str) -> None:
    b = RoomBuilder(version)
    create = b.create("alice")
    b.topic("alice", apply=False)
    assert code(b, b.join("alice", prev=[create, b.latest[0]])) == "join_rule_forbids"


@pytest.mark.parametrize("version", ALL)
def test_join_for_someone_else_rejected(version: str) -> None:
    b = room(version)
    assert code(b, b.member("alice", "bob", "join")) == "sender_mismatch"


@pytest.mark.parametrize("version", ALL)
def test_banned_user_cannot_join_public_room(version: str) -> None:
    b = room(version)
    b.ban("alice", "bob")
    assert code(b, b.join("bob")) == "banned"


@pytest.mark.parametrize("version", ALL)
def test_public_join_allowed(version: str) -> None:
    b = room(version)
    assert code(b, b.join("bob")) is None


@pytest.mark.parametrize("version", ALL)
def test_invite_only_join(version: str) -> None:
    b = room(version, "invite")
    assert code(b, b.join("bob", apply=False)) == "join_rule_forbids"
    b.invite("alice", "bob")
    assert code(b, b.join("bob")) is None
    # already joined: a re-join (e.g. a profile change) is allowed
    assert code(b, b.join("bob", displayname="Bob")) is None


@pytest.mark.parametrize("version", ALL)
def test_no_join_rules_means_invite_only(version: str) -> None:
    b = room(version, join_rule=None)
    assert code(b, b.join("bob", apply=False)) == "join_rule_forbids"
    b.invite("alice", "bob")
    assert code(b, b.join("bob")) is None


@pytest.mark.parametrize("version", V7_PLUS)
def test_knock_room_admits_the_invited(version: str) -> None:
    b = room(version, "knock")
    assert code(b, b.join("bob", apply=False)) == "join_rule_forbids"
    b.invite("alice", "bob")
    assert code(b, b.join("bob")) is None


@pytest.mark.parametrize("version", PRE_V7)
def test_knock_rule_is_unknown_before_v7(version: str) -> None:
    b = room(version, "knock")
    b.invite("alice", "bob")
    failure = b.check(b.join("bob"))
    assert failure is not None and failure.code == "join_rule_forbids"
    assert failure.rule == "m.room.member/join/7"


@pytest.mark.parametrize("version", ALL)
def test_private_join_rule_rejects(version: str) -> None:
    b = room(version, "private")
    b.invite("alice", "bob")
    assert code(b, b.join("bob")) == "join_rule_forbids"


def _restricted(version: str, rule_name: str = "restricted") -> RoomBuilder:
    b = room(version, rule_name, invite=50)
    b.join_rules("alice", rule_name, allow=[{"type": "m.room_membership", "room_id": "!x:t"}])
    b.invite("alice", "carol")
    b.join("carol")  # carol: joined, level 0 < invite level 50
    return b


@pytest.mark.parametrize(
    ("version", "rule_name"),
    [(v, "restricted") for v in V8_PLUS] + [(v, "knock_restricted") for v in V10_PLUS],
)
def test_restricted_join(version: str, rule_name: str) -> None:
    b = _restricted(version, rule_name)
    # 5.3.5.2: no authoriser, an authoriser who is not joined, one who may not invite
    assert code(b, b.join("bob", apply=False)) == "bad_authoriser"
    missing = b.join("bob", join_authorised_via_users_server="@dave:test", apply=False)
    assert code(b, missing) == "bad_authoriser"
    weak = b.join("bob", join_authorised_via_users_server="@carol:test", apply=False)
    assert code(b, weak) == "bad_authoriser"
    # 5.3.5.3: a joined member with the invite level
    ok = b.join("bob", join_authorised_via_users_server="@alice:test", apply=False)
    assert code(b, ok) is None
    # 5.3.5.1: invited users need no authoriser
    b.invite("alice", "erin")
    assert code(b, b.join("erin")) is None


@pytest.mark.parametrize("version", V8_PLUS)
def test_restricted_join_authoriser_must_be_joined(version: str) -> None:
    b = _restricted(version)
    b.power_levels("alice", users={"erin": 100} | ({} if version == "12" else {"alice": 100}))
    # erin has the power but has never joined; after joining, erin can authorise
    failure = b.check(b.join("bob", join_authorised_via_users_server="@erin:test", apply=False))
    assert failure is not None and failure.code == "bad_authoriser"
    assert "not joined" in failure.reason
    b.invite("alice", "erin")
    b.join("erin")
    assert code(b, b.join("bob", join_authorised_via_users_server="@erin:test")) is None


def test_v12_creator_authorises_restricted_join() -> None:
    b = _restricted("12")
    assert code(b, b.join("bob", join_authorised_via_users_server="@alice:test")) is None


@pytest.mark.parametrize("version", PRE_V8)
def test_restricted_is_unknown_before_v8(version: str) -> None:
    b = room(version, "restricted")
    assert code(b, b.join("bob", join_authorised_via_users_server="@alice:test")) == (
        "join_rule_forbids"
    )


@pytest.mark.parametrize("version", ["8", "9"])
def test_knock_restricted_is_unknown_in_v8_v9(version: str) -> None:
    b = room(version, "knock_restricted")
    assert code(b, b.join("bob", join_authorised_via_users_server="@alice:test")) == (
        "join_rule_forbids"
    )


# -- 5.4 invite -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_invite_by_member_allowed(version: str) -> None:
    b = room(version)
    assert code(b, b.invite("alice", "bob")) is None


@pytest.mark.parametrize("version", ALL)
def test_invite_by_non_member_rejected(version: str) -> None:
    b = room(version)
    assert code(b, b.invite("carol", "bob")) == "not_in_room"


@pytest.mark.parametrize("version", ALL)
def test_invite_of_joined_or_banned_rejected(version: str) -> None:
    b = room(version)
    b.join("bob")
    assert code(b, b.invite("alice", "bob", apply=False)) == "target_in_room"
    b.ban("alice", "bob")
    assert code(b, b.invite("alice", "bob")) == "banned"


@pytest.mark.parametrize("version", ALL)
def test_invite_needs_invite_level(version: str) -> None:
    b = room(version, invite=10)
    b.join("bob")
    failure = b.check(b.invite("bob", "carol", apply=False))
    assert failure is not None and failure.code == "insufficient_power"
    assert failure.rule == "m.room.member/invite/4"
    b.power_levels(
        "alice", users={"bob": 10} | ({} if version == "12" else {"alice": 100}), invite=10
    )
    assert code(b, b.invite("bob", "carol")) is None


# -- 5.4.1 third-party invites ----------------------------------------------------------------

KEY = SigningKey(b"\x07" * 32)
OTHER_KEY = SigningKey(b"\x08" * 32)


def _pub(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode().rstrip("=")


def _signed(mxid: str, token: str = "tok", key: SigningKey = KEY, **extra: Any) -> dict[str, Any]:
    signed: dict[str, Any] = {"mxid": mxid, "token": token, **extra}
    sig = key.sign(encode_canonical(signed)).signature
    signed["signatures"] = {"id.example": {"ed25519:0": base64.b64encode(sig).decode().rstrip("=")}}
    return signed


def _tpi_room(version: str, **content: Any) -> RoomBuilder:
    b = room(version)
    body = {"display_name": "b***@example.com", "public_key": _pub(KEY), **content}
    b.state_event("m.room.third_party_invite", "tok", body, "alice")
    return b


@pytest.mark.parametrize("version", ALL)
def test_third_party_invite_allowed(version: str) -> None:
    b = _tpi_room(version)
    eid = b.invite(
        "alice", "bob", third_party_invite={"display_name": "b", "signed": _signed("@bob:test")}
    )
    assert code(b, eid) is None


@pytest.mark.parametrize("version", ALL)
def test_third_party_invite_needs_no_membership_of_sender(version: str) -> None:
    # 5.4.1 comes before 5.4.2: the issuer of the third-party invite may have left.
    b = _tpi_room(version)
    b.leave("alice")
    eid = b.invite("alice", "bob", third_party_invite={"signed": _signed("@bob:test")})
    assert code(b, eid) is None


@pytest.mark.parametrize("version", ALL)
def test_third_party_invite_key_from_public_keys(version: str) -> None:
    b = _tpi_room(version, public_key=_pub(OTHER_KEY), public_keys=[{"public_key": _pub(KEY)}])
    eid = b.invite("alice", "bob", third_party_invite={"signed": _signed("@bob:test")})
    assert code(b, eid) is None


def test_third_party_invite_only_the_first_signature_counts() -> None:
    """As Synapse checks it (docs/interop.md): the first ed25519 signature by server name
    decides; one that comes later is never tried."""
    b = _tpi_room("10")
    bad = OTHER_KEY.sign(encode_canonical({"mxid": "@bob:test", "token": "tok"})).signature
    bad_sig = {"ed25519:0": base64.b64encode(bad).decode()}
    signed = _signed("@bob:test")
    signed["signatures"]["zzz.example"] = bad_sig
    eid = b.invite("alice", "bob", third_party_invite={"signed": signed})
    assert code(b, eid) is None
    hidden = _signed("@bob:test")
    hidden["signatures"]["aaa.example"] = bad_sig
    eid = b.invite("alice", "bob", third_party_invite={"signed": hidden})
    assert code(b, eid) == "bad_third_party_invite"


@pytest.mark.parametrize("junk", ["AAAA", "", "not base64!", 7, None, "A" * 200, {"x": 1}])
def test_third_party_invite_malformed_signatures_do_not_match(junk: Any) -> None:
    b = _tpi_room("10")
    bad = _signed("@bob:test")
    bad["signatures"] = {"id.example": {"ed25519:0": junk}, "x": junk, 5: {"ed25519:1": junk}}
    assert code(b, b.invite("alice", "bob", third_party_invite={"signed": bad})) == (
        "bad_third_party_invite"
    )
    good = _signed("@bob:test")
    good["signatures"]["zzz.example"] = {"ed25519:0": junk}
    assert code(b, b.invite("alice", "bob", third_party_invite={"signed": good})) is None


@pytest.mark.parametrize("signatures", [None, "sig", [1], {"id.example": "sig"}])
def test_third_party_invite_signatures_not_an_object(signatures: Any) -> None:
    b = _tpi_room("10")
    signed = _signed("@bob:test")
    signed["signatures"] = signatures
    eid = b.invite("alice", "bob", third_party_invite={"signed": signed})
    assert code(b, eid) == "bad_third_party_invite"


def test_third_party_invite_signed_without_canonical_form() -> None:
    b = _tpi_room("3")  # v1-v5 allow floats, so NaN can reach the rules
    signed = _signed("@bob:test")
    signed["nan"] = float("nan")
    eid = b.invite("alice", "bob", third_party_invite={"signed": signed})
    assert code(b, eid) == "bad_third_party_invite"


@pytest.mark.parametrize("key", ["", "AAAA", "!!", 5, None])
def test_third_party_invite_malformed_public_key(key: Any) -> None:
    b = _tpi_room("10", public_key=key, public_keys=[{"public_key": key}, "junk", {}])
    eid = b.invite("alice", "bob", third_party_invite={"signed": _signed("@bob:test")})
    assert code(b, eid) == "bad_third_party_invite"


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize(
    ("case", "step"),
    [
        ("banned", "1.1"),
        ("no_signed", "1.2"),
        ("no_token", "1.3"),
        ("mxid_mismatch", "1.4"),
        ("no_invite_event", "1.5"),
        ("other_sender", "1.6"),
        ("bad_signature", "1.8"),
        ("unsigned_extra", "1.8"),
    ],
)
def test_third_party_invite_rejected(version: str, case: str, step: str) -> None:
    b = _tpi_room(version)
    sender = "alice"
    tpi: dict[str, Any] = {"signed": _signed("@bob:test")}
    if case == "banned":
        b.ban("alice", "bob")
    elif case == "no_signed":
        tpi = {"display_name": "x"}
    elif case == "no_token":
        tpi["signed"].pop("token")
    elif case == "mxid_mismatch":
        tpi["signed"] = _signed("@carol:test")
    elif case == "no_invite_event":
        tpi["signed"] = _signed("@bob:test", token="other")
    elif case == "other_sender":
        b.join("carol")
        sender = "carol"
    elif case == "bad_signature":
        tpi["signed"] = _signed("@bob:test", key=OTHER_KEY)
    elif case == "unsigned_extra":
        tpi["signed"]["extra"] = "not signed"
    failure = b.check(b.invite(sender, "bob", third_party_invite=tpi))
    assert failure is not None
    assert failure.code == ("banned" if case == "banned" else "bad_third_party_invite")
    assert failure.rule == f"m.room.member/invite/{step}"


# -- 5.5 leave --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_leave_self(version: str) -> None:
    b = room(version)
    assert code(b, b.leave("bob", apply=False)) == "not_in_room"
    b.join("bob")
    assert code(b, b.leave("bob")) is None
    b.invite("alice", "carol")
    assert code(b, b.leave("carol")) is None  # rejecting an invite
    b.ban("alice", "dave")
    assert code(b, b.leave("dave")) == "not_in_room"


@pytest.mark.parametrize("version", V7_PLUS)
def test_knock_can_be_withdrawn(version: str) -> None:
    b = room(version, "knock")
    b.knock("bob")
    assert code(b, b.leave("bob")) is None


@pytest.mark.parametrize("version", ALL)
def test_kick_by_non_member_rejected(version: str) -> None:
    b = room(version)
    b.join("bob")
    assert code(b, b.kick("carol", "bob")) == "not_in_room"


@pytest.mark.parametrize("version", ALL)
def test_kick(version: str) -> None:
    b = room(version, users={"bob": 50, "carol": 50})
    for user in ("bob", "carol", "dave"):
        b.join(user)
    assert code(b, b.kick("alice", "bob", apply=False)) is None
    # equal level: not allowed (5.5.4 needs target < sender)
    assert rule(b, b.kick("bob", "carol", apply=False)) == "m.room.member/leave/4"
    # below the kick level
    assert code(b, b.kick("dave", "carol", apply=False)) == "insufficient_power"


@pytest.mark.parametrize("version", ALL)
def test_unban_needs_ban_level(version: str) -> None:
    users = {"bob": 60}
    b = room(version, users=users, kick=50, ban=70)
    b.join("bob")
    b.ban("alice", "carol")
    assert rule(b, b.kick("bob", "carol", apply=False)) == "m.room.member/leave/3"
    assert code(b, b.kick("alice", "carol")) is None


# -- 5.6 ban ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_ban(version: str) -> None:
    b = room(version, users={"bob": 50, "carol": 50})
    for user in ("bob", "carol"):
        b.join(user)
    assert code(b, b.ban("erin", "bob", apply=False)) == "not_in_room"
    assert rule(b, b.ban("bob", "carol", apply=False)) == "m.room.member/ban/2"
    assert code(b, b.ban("alice", "carol", apply=False)) is None
    # banning someone not in the room at all
    assert code(b, b.ban("alice", "zed")) is None


def test_v12_creator_cannot_be_banned_by_anyone() -> None:
    b = room("12", users={"bob": 100})
    b.join("bob")
    assert code(b, b.ban("bob", "alice", apply=False)) == "insufficient_power"
    assert code(b, b.ban("alice", "bob")) is None


def test_v12_additional_creators_outrank_everyone() -> None:
    b = RoomBuilder("12")
    b.create("alice", additional_creators=["@bob:test"])
    b.join("alice")
    b.power_levels("alice", users={"carol": 100})
    b.join_rules("alice", "public")
    b.join("bob")
    b.join("carol")
    assert code(b, b.kick("carol", "bob", apply=False)) == "insufficient_power"
    assert code(b, b.kick("bob", "carol", apply=False)) is None
    # two creators: equal (infinite) levels, neither can kick the other
    assert code(b, b.kick("bob", "alice", apply=False)) == "insufficient_power"


# -- 5.7 knock --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", V7_PLUS)
def test_knock(version: str) -> None:
    b = room(version, "knock")
    assert code(b, b.knock("bob")) is None
    assert code(b, b.member("alice", "carol", "knock")) == "sender_mismatch"
    b.invite("alice", "dave")
    assert code(b, b.knock("dave")) == "knock_not_allowed"
    b.ban("alice", "erin")
    assert code(b, b.knock("erin")) == "knock_not_allowed"
    assert code(b, b.knock("alice")) == "knock_not_allowed"


@pytest.mark.parametrize("version", V7_PLUS)
def test_knock_needs_knock_join_rule(version: str) -> None:
    b = room(version, "public")
    assert code(b, b.knock("bob")) == "join_rule_forbids"


@pytest.mark.parametrize("version", V10_PLUS)
def test_knock_on_knock_restricted(version: str) -> None:
    b = room(version, "knock_restricted")
    assert code(b, b.knock("bob")) is None


@pytest.mark.parametrize("version", ["7", "8", "9"])
def test_knock_restricted_unknown_before_v10(version: str) -> None:
    b = room(version, "knock_restricted")
    assert code(b, b.knock("bob")) == "join_rule_forbids"


@pytest.mark.parametrize("version", PRE_V7)
def test_knock_is_unknown_membership_before_v7(version: str) -> None:
    b = room(version, "knock")
    assert code(b, b.knock("bob")) == "unknown_membership"


# -- m.federate applies to membership too (rule 3 / 4) ----------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_unfederated_room_refuses_remote_join(version: str) -> None:
    b = RoomBuilder(version)
    b.create("alice", **{"m.federate": False})
    b.join("alice")
    b.join_rules("alice", "public")
    assert code(b, b.join("@bob:test")) is None
    assert code(b, b.join("@dave:other.example")) == "room_not_federated"
