"""The server's ed25519 signing key: its key file, and signing and verifying events.

Spec: https://spec.matrix.org/latest/appendices/#signing-json (signing JSON),
https://spec.matrix.org/latest/server-server-api/#signing-events (an event is signed in its
redacted form, after its content hash is added), and
https://spec.matrix.org/latest/server-server-api/#publishing-keys (key IDs `ed25519:<version>`).

The key file is Synapse's format, one key a line: `ed25519 <version> <unpadded base64 seed>`,
so an operator can move a key between Synapse and the roomserver. Only the first ed25519 line
is used (Synapse signs with the first key of its file too).

Pure: the file's text is read and written by the shell; randomness comes in as bytes.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from worker.core.canonical import encode_canonical, encode_canonical_float_free
from worker.core.hashes import content_hash, unpadded_b64
from worker.core.redaction import redact
from worker.core.versions import RoomRules

ALGORITHM = "ed25519"
SEED_BYTES = 32
# Key versions are opaque; Synapse generates `a_` + four letters and digits. The grammar
# (spec: "[a-zA-Z0-9_]") keeps a key ID usable in a URL path (`/key/v2/server/{keyId}`).
_VERSION = re.compile(r"[A-Za-z0-9_]{1,64}")
_VERSION_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class KeyFileError(ValueError):
    """The key file's text is not a key: the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class ServerKey:
    """The signing identity of this server: its name, key ID and ed25519 key."""

    server_name: str
    version: str
    key: SigningKey

    @property
    def key_id(self) -> str:
        return f"{ALGORITHM}:{self.version}"

    @property
    def verify_key_b64(self) -> str:
        """The public key, unpadded standard base64, as `/key/v2/server` publishes it."""
        return unpadded_b64(bytes(self.key.verify_key))

    def sign(self, message: bytes) -> str:
        """The unpadded base64 ed25519 signature of `message`."""
        return unpadded_b64(self.key.sign(message).signature)


def _b64decode(text: str) -> bytes:
    """Unpadded (or padded) standard or URL-safe base64, as Synapse's decoder accepts."""
    padded = text + "=" * (-len(text) % 4)
    alt = b"-_" if ("-" in text or "_" in text) else None
    return base64.b64decode(padded, altchars=alt, validate=True)


def parse_key_file(text: str, server_name: str) -> ServerKey:
    """The first ed25519 key of a key file's text; `KeyFileError` says why there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise KeyFileError("the key file is empty")
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if len(parts) != 3:
            raise KeyFileError(
                f"line {number}: expected 'ed25519 <version> <base64 seed>', got "
                f"{len(parts)} field(s)"
            )
        algorithm, version, seed_b64 = parts
        if algorithm != ALGORITHM:
            continue
        if not _VERSION.fullmatch(version):
            raise KeyFileError(f"line {number}: key version {version!r} is not [A-Za-z0-9_]+")
        try:
            seed = _b64decode(seed_b64)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"line {number}: the seed is not base64") from None
        if len(seed) != SEED_BYTES:
            raise KeyFileError(
                f"line {number}: the seed is {len(seed)} bytes, an ed25519 seed is {SEED_BYTES}"
            )
        return ServerKey(server_name=server_name, version=version, key=SigningKey(seed))
    raise KeyFileError("the key file holds no ed25519 key")


def new_key_file(seed: bytes, version_entropy: bytes) -> str:
    """A key file's text for a new key: `seed` is 32 random bytes, `version_entropy` four."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"an ed25519 seed is {SEED_BYTES} bytes")
    version = "a_" + "".join(
        _VERSION_ALPHABET[b % len(_VERSION_ALPHABET)] for b in version_entropy[:4]
    )
    return f"{ALGORITHM} {version} {unpadded_b64(seed)}\n"


def _signed_bytes(pdu: Mapping[str, Any], rules: RoomRules, *, float_free: bool = False) -> bytes:
    """What an event's signatures cover: the redacted event without `signatures`, `unsigned`.
    `float_free`: as for `hashes.content_hash`."""
    redacted = redact(pdu, rules)
    for key in ("signatures", "unsigned", "age_ts"):
        redacted.pop(key, None)
    return encode_canonical_float_free(redacted) if float_free else encode_canonical(redacted)


def hash_and_sign(pdu: dict[str, Any], rules: RoomRules, key: ServerKey) -> dict[str, Any]:
    """`pdu` with its content hash and this server's signature added (a new dict).

    Order matters: the content hash first (it survives redaction, so the signature covers
    the whole content through it), then the signature over the redacted event.
    """
    return hash_and_sign_bytes(pdu, rules, key)[0]


def hash_and_sign_bytes(
    pdu: dict[str, Any], rules: RoomRules, key: ServerKey, *, float_free: bool = False
) -> tuple[dict[str, Any], bytes]:
    """`hash_and_sign`, and the canonical bytes the signature covers.

    Those bytes are the redacted event without `signatures`, `unsigned` and `age_ts`: what
    the reference hash is taken over too (`worker.core.hashes.reference_hash`), for a v1/v2
    event carrying its `event_id` as for a v3+ event without one. A builder hashes them
    instead of redacting and encoding the event a second time for its ID.

    `float_free`: the caller vouches that the hashed parts of `pdu` hold no float (it held
    them to `check_json_values` under strict rules), so the faster encoding gives the same
    bytes (`worker.core.canonical.encode_canonical_float_free`).
    """
    signed = dict(pdu)
    signed.pop("signatures", None)
    signed["hashes"] = {"sha256": unpadded_b64(content_hash(signed, float_free=float_free))}
    covered = _signed_bytes(signed, rules, float_free=float_free)
    signature = key.sign(covered)
    given = pdu.get("signatures")
    signatures = copy.deepcopy(dict(given)) if given else {}
    signatures.setdefault(key.server_name, {})[key.key_id] = signature
    signed["signatures"] = signatures
    return signed, covered


def verify_event(
    pdu: Mapping[str, Any], rules: RoomRules, server_name: str, key_id: str, verify_key: bytes
) -> bool:
    """True when `pdu` carries a valid signature of `server_name` by `key_id`."""
    signatures = pdu.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    by_server = signatures.get(server_name)
    signature = by_server.get(key_id) if isinstance(by_server, Mapping) else None
    if not isinstance(signature, str):
        return False
    try:
        VerifyKey(verify_key).verify(_signed_bytes(pdu, rules), _b64decode(signature))
    except (BadSignatureError, binascii.Error, ValueError):
        return False
    return True


__all__ = [
    "ALGORITHM",
    "KeyFileError",
    "ServerKey",
    "hash_and_sign",
    "hash_and_sign_bytes",
    "new_key_file",
    "parse_key_file",
    "verify_event",
]
