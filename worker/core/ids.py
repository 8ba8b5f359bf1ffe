"""Identifier grammar: server names, user IDs, room IDs, event IDs.

Spec: https://spec.matrix.org/latest/appendices/#identifier-grammar (server names, common
identifier format, user identifiers including "Historical User IDs", room IDs, event IDs) and
the room version pages for the event ID format of each version.

All checks are pure predicates on `str`; `worker.core.format` turns a False into a Rejection
that names the field. Lengths are counted in UTF-8 bytes, as the spec says ("MUST NOT exceed
255 bytes").
"""

from __future__ import annotations

import re

from worker.core.versions import EventIdFormat, RoomRules

# "The length of a ... identifier, including the sigil and the domain, MUST NOT exceed 255
# bytes."
MAX_ID_BYTES = 255

# server_name = hostname [ ":" port ];  port = 1*5DIGIT
# hostname    = IPv4address / "[" IPv6address "]" / dns-name
# IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT  (a subset of dns-name)
# IPv6address = 2*45IPv6char;  IPv6char = DIGIT / %x41-46 / %x61-66 / ":" / "."
# dns-name    = 1*255dns-char; dns-char = DIGIT / ALPHA / "-" / "."
_SERVER_NAME = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(?::[0-9]{1,5})?")

# user_id_char = DIGIT / %x61-7A / "-" / "." / "=" / "_" / "/" / "+"  (current grammar)
_LOCALPART = re.compile(r"[a-z0-9\-.=_/+]+")
# Historical user IDs: "%x21-39 / %x3B-7E" (printable ASCII except ':'). Servers "should
# accept" them over federation, and events from such users exist in old rooms.
_HISTORICAL_LOCALPART = re.compile(r"[\x21-\x39\x3b-\x7e]+")

# v3 event IDs: "$" + unpadded standard base64 of a sha256 (32 bytes -> 43 characters).
_EVENT_ID_V3 = re.compile(r"\$[A-Za-z0-9+/]{43}")
# v4+ event IDs: the same, URL-safe alphabet.
_EVENT_ID_V4 = re.compile(r"\$[A-Za-z0-9\-_]{43}")
# v12 room IDs: "!" + unpadded URL-safe base64 of the create event's reference hash.
_ROOM_ID_V12 = re.compile(r"![A-Za-z0-9\-_]{43}")


def is_valid_server_name(name: str) -> bool:
    """True if `name` follows the server name grammar (hostname and optional port)."""
    return _SERVER_NAME.fullmatch(name) is not None


def _fits(identifier: str) -> bool:
    return len(identifier.encode("utf-8")) <= MAX_ID_BYTES


def _sigil_opaque_domain(identifier: str, sigil: str) -> bool:
    """`<sigil><opaque>:<server_name>` with a non-empty opaque part.

    The common identifier format: the domain is everything after the *first* colon (the
    opaque part never contains one), and must itself be a server name.
    """
    if not identifier.startswith(sigil):
        return False
    opaque, colon, domain = identifier[1:].partition(":")
    return bool(opaque) and bool(colon) and is_valid_server_name(domain)


def is_valid_user_id(user_id: str, *, historical: bool = True) -> bool:
    """True if `user_id` is `@localpart:server_name` within 255 bytes.

    `historical=True` (the default, for federation) accepts any printable ASCII except ':'
    in the localpart; `historical=False` applies the current, stricter grammar.
    """
    if not user_id.startswith("@") or not _fits(user_id):
        return False
    localpart, colon, domain = user_id[1:].partition(":")
    pattern = _HISTORICAL_LOCALPART if historical else _LOCALPART
    return bool(colon) and pattern.fullmatch(localpart) is not None and is_valid_server_name(domain)


def is_valid_room_id(room_id: str, rules: RoomRules) -> bool:
    """True if `room_id` is a room ID of the form the room version uses.

    v1-v11: `!opaque_id:server_name`. v12 (`room_id_from_create_event`): `!` + 43 URL-safe
    base64 characters, no domain.
    """
    if not _fits(room_id):
        return False
    if rules.room_id_from_create_event:
        return _ROOM_ID_V12.fullmatch(room_id) is not None
    return _sigil_opaque_domain(room_id, "!")


def is_valid_event_id(event_id: str, rules: RoomRules) -> bool:
    """True if `event_id` is an event ID of the form the room version uses.

    v1, v2: `$opaque_id:server_name`. v3: `$` + 43 standard base64 characters. v4+: `$` + 43
    URL-safe base64 characters.
    """
    if not _fits(event_id):
        return False
    if rules.event_id_format is EventIdFormat.CARRIED:
        return _sigil_opaque_domain(event_id, "$")
    if rules.event_id_format is EventIdFormat.BASE64:
        return _EVENT_ID_V3.fullmatch(event_id) is not None
    return _EVENT_ID_V4.fullmatch(event_id) is not None


def domain_of(identifier: str) -> str | None:
    """The server name of a `sigil opaque:domain` identifier, or None if it has no domain.

    Used by the auth rules ("the sender's domain"). v12 room IDs and v3+ event IDs have no
    domain.
    """
    _, colon, domain = identifier.partition(":")
    return domain if colon else None
