"""Rules 5.4.1.2 to 5.4.1.8: invites that redeem an `m.room.third_party_invite`.

The identity server that saw the third-party identifier signs `{mxid, token, ...}`; the room's
`m.room.third_party_invite` event (state key = token) holds the identity server's public
key(s). An invite carrying such a `signed` block is allowed without the sender being joined.

Spec: https://spec.matrix.org/latest/rooms/v12/#authorisation-rules (rule 5.4.1, the same in
every version), https://spec.matrix.org/latest/appendices/#signing-json (what is signed),
https://spec.matrix.org/latest/client-server-api/#mroomthird_party_invite (the keys).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from worker.core.auth.common import THIRD_PARTY_INVITE, AuthEvents, reject
from worker.core.canonical import encode_canonical
from worker.core.events import Event
from worker.core.outcomes import Rejection

_R = "m.room.member/invite"


def _unbase64(text: Any) -> bytes | None:
    """Matrix's unpadded base64; standard or URL-safe alphabet, padding tolerated.

    The spec says "base64-encoded" for the keys and "unpadded base64" for signatures;
    identity servers have used both alphabets, and accepting both cannot make a wrong
    signature verify. Anything undecodable is None (it matches no key).
    """
    if not isinstance(text, str):
        return None
    raw = text.strip().rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _public_keys(invite: Event) -> Iterator[bytes]:
    """5.4.1.7.1 and 5.4.1.7.2: `public_key`, then each `public_keys[].public_key`."""
    # A key that is not 32 bytes is skipped by the caller: nacl would raise on it, and a
    # malformed key in one entry must not hide a good one in another.
    single = _unbase64(invite.content.get("public_key"))
    if single is not None:
        yield single
    listed = invite.content.get("public_keys")
    if isinstance(listed, list):
        for entry in listed:
            if isinstance(entry, dict):
                key = _unbase64(entry.get("public_key"))
                if key is not None:
                    yield key


def _first_signature(signed: Mapping[str, Any]) -> bytes | None:
    """The first ed25519 signature in `signed.signatures`, by server name, then key ID.

    Synapse tries only this one: it walks the signatures (its events hold JSON objects with
    sorted keys) once per public key and moves to the next key as soon as a signature fails,
    so a good signature after another ed25519 one never counts. The spec says "any
    signature"; the two readings split rooms, so we read it as Synapse does
    (docs/interop.md). A server entry that is not an object ends the walk: Synapse raises
    there, and we match nothing.
    """
    by_server = signed.get("signatures")
    if not isinstance(by_server, dict):
        return None
    for server in sorted(k for k in by_server if isinstance(k, str)):
        by_key = by_server[server]
        if not isinstance(by_key, dict):
            return None
        for key_id in sorted(k for k in by_key if isinstance(k, str)):
            # Only ed25519 is defined for Matrix signing keys; other algorithms are skipped.
            if key_id.startswith("ed25519:"):
                sig = _unbase64(by_key[key_id])
                return sig if sig is not None and len(sig) == 64 else None
    return None


def signature_matches(signed: Mapping[str, Any], invite: Event) -> bool:
    """5.4.1.7: the first ed25519 signature in `signed` verifies under a public key of the
    invite event (see `_first_signature` for why only the first).

    The signed bytes are the canonical JSON of `signed` without `signatures` and `unsigned`.
    """
    sig = _first_signature(signed)
    if sig is None:
        return False
    try:
        message = encode_canonical(
            {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
        )
    except (TypeError, ValueError):
        # No canonical form (NaN, lone surrogates): nothing can have been signed.
        return False
    for raw in _public_keys(invite):
        if len(raw) != 32:
            continue
        try:
            VerifyKey(raw).verify(message, sig)
        except BadSignatureError:
            continue
        return True
    return False


def check_third_party_invite(
    event: Event, target: str, auth_events: AuthEvents
) -> Rejection | None:
    """5.4.1.2 to 5.4.1.8 (all versions); 5.4.1.1 (banned target) is checked by the caller."""
    third_party = event.content.get("third_party_invite")
    # Steps are named as in every version's text ("m.room.member/invite/1.x"); v8-v11 number
    # the membership rule 4 instead of 5, the sub-steps are the same.
    # 5.4.1.2: the invite carries the identity server's `signed` block.
    signed = third_party.get("signed") if isinstance(third_party, dict) else None
    if not isinstance(signed, dict):
        return reject(
            "bad_third_party_invite", f"{_R}/1.2", "third_party_invite has no signed object."
        )
    # 5.4.1.3: which names the invited user and the invite token.
    mxid, token = signed.get("mxid"), signed.get("token")
    if "mxid" not in signed or "token" not in signed:
        return reject("bad_third_party_invite", f"{_R}/1.3", "signed lacks mxid or token.")
    # 5.4.1.4: for the user this event invites, so a signature for one user cannot be
    # replayed to invite another.
    if mxid != target:
        return reject(
            "bad_third_party_invite", f"{_R}/1.4", "signed.mxid does not match the state_key."
        )
    # 5.4.1.5: the token names an m.room.third_party_invite in the room state (state key =
    # token); revoking the third-party invite (an empty one) removes its keys, so a
    # later redemption fails at 5.4.1.7.
    invite = auth_events.get((THIRD_PARTY_INVITE, token)) if isinstance(token, str) else None
    if invite is None:
        return reject(
            "bad_third_party_invite", f"{_R}/1.5", "No m.room.third_party_invite matches the token."
        )
    # 5.4.1.6: redeemed by whoever issued the third-party invite: the identity server's
    # signature says who is invited, the issuer's server vouches for the invite event.
    if event.sender != invite.sender:
        return reject(
            "bad_third_party_invite",
            f"{_R}/1.6",
            "The sender did not send the matching m.room.third_party_invite.",
        )
    # 5.4.1.7 and 5.4.1.8: and signed with one of its keys.
    if signature_matches(signed, invite):
        return None
    return reject(
        "bad_third_party_invite", f"{_R}/1.8", "No signature in signed matches the invite's keys."
    )
