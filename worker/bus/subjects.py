"""Subject and stream names of the wire contract, built from the configurable prefix (DESIGN §4).

A room ID appears in a subject as its *room token*: the unpadded URL-safe base64 of its UTF-8
bytes. That alphabet (`A-Z a-z 0-9 - _`) has no `.`, `*`, `>` or whitespace, so any room ID
fits in one subject token, and unlike Dendrite's tokeniser the mapping is lossless.

Producers publish to `<prefix>.input.<room token>`. The input stream rewrites that subject to
`<prefix>.input.<shard>.<room token>` as it stores the message (a subject transform with
`{{partition(K,1)}}`), so every room lands on one fixed shard and each shard's durable consumer
filters on `<prefix>.input.<shard>.*`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

# Stream names are the prefix upper-cased, so the prefix must be a valid stream-name part and
# a single subject token: no dots, wildcards or whitespace.
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SubjectError(ValueError):
    """A name that cannot be part of the wire contract; `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def room_token(room_id: str) -> str:
    """The subject token for a room ID (unpadded URL-safe base64 of its UTF-8 bytes)."""
    return base64.urlsafe_b64encode(room_id.encode("utf-8")).rstrip(b"=").decode("ascii")


def room_id_from_token(token: str) -> str:
    """Inverse of `room_token`; raises `SubjectError` when `token` is not one."""
    if not token or not re.fullmatch(r"[A-Za-z0-9_-]+", token) or len(token) % 4 == 1:
        raise SubjectError("bad_room_token", f"{token!r} is not a room token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        room_id = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise SubjectError("bad_room_token", f"{token!r} is not a room token: {exc}") from None
    if room_token(room_id) != token:
        # Non-canonical base64 (stray low bits in the last character) would alias two tokens.
        raise SubjectError("bad_room_token", f"{token!r} is not a canonical room token")
    return room_id


@dataclass(frozen=True, slots=True)
class Subjects:
    """Every name derived from one prefix; `Subjects("roomserver").input_stream == "ROOMSERVER_INPUT"`."""

    prefix: str = "roomserver"

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise SubjectError(
                "bad_prefix",
                f"prefix {self.prefix!r} must be 1-64 characters of A-Z a-z 0-9 _ -",
            )

    # --- streams ---------------------------------------------------------------------------

    @property
    def input_stream(self) -> str:
        return f"{self.prefix.upper()}_INPUT"

    @property
    def output_stream(self) -> str:
        return f"{self.prefix.upper()}_OUTPUT"

    @property
    def deadletter_stream(self) -> str:
        return f"{self.prefix.upper()}_DEADLETTER"

    # --- input -----------------------------------------------------------------------------

    @property
    def input_wildcard(self) -> str:
        """What producers publish to: exactly one token after `input`."""
        return f"{self.prefix}.input.*"

    def input(self, room_id: str) -> str:
        return f"{self.prefix}.input.{room_token(room_id)}"

    def input_shard_transform(self, shards: int) -> str:
        """Destination of the input stream's subject transform (NATS mapping syntax)."""
        return f"{self.prefix}.input.{{{{partition({shards},1)}}}}.{{{{wildcard(1)}}}}"

    def input_shard_filter(self, shard: int) -> str:
        return f"{self.prefix}.input.{shard}.*"

    def input_consumer(self, shard: int) -> str:
        """Durable name of a shard's pull consumer."""
        return f"shard-{shard}"

    def parse_stored_input(self, subject: str) -> tuple[int | None, str]:
        """(shard, room token) of an input subject as stored (or as published: shard None)."""
        head = f"{self.prefix}.input."
        if not subject.startswith(head):
            raise SubjectError("bad_subject", f"{subject!r} is not an input subject")
        parts = subject[len(head) :].split(".")
        if len(parts) == 1:
            return None, parts[0]
        if len(parts) == 2 and parts[0].isascii() and parts[0].isdigit():
            return int(parts[0]), parts[1]
        raise SubjectError("bad_subject", f"{subject!r} is not an input subject")

    # --- output and dead letters -----------------------------------------------------------

    @property
    def output_wildcard(self) -> str:
        return f"{self.prefix}.output.>"

    def output(self, room_id: str) -> str:
        return f"{self.prefix}.output.{room_token(room_id)}"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"


# Header names of the contract (DESIGN §4).
ROOM_ID_HEADER = "Room-ID"
REPLY_INBOX_HEADER = "Reply-Inbox"
OUTPUT_TYPE_HEADER = "Output-Type"
MSG_ID_HEADER = "Nats-Msg-Id"

__all__ = [
    "MSG_ID_HEADER",
    "OUTPUT_TYPE_HEADER",
    "REPLY_INBOX_HEADER",
    "ROOM_ID_HEADER",
    "SubjectError",
    "Subjects",
    "room_id_from_token",
    "room_token",
]
