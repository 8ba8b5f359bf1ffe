"""The error codes of the micro service `roomserver` (DESIGN §4): every query, perform and
admin endpoint that cannot answer replies with the micro service's error headers
(`Nats-Service-Error-Code`: the status below, `Nats-Service-Error`: the message), a
`Roomserver-Error` header with one of these codes, and a JSON body naming it.

A code says what the asker can do about it; the message says why, for people:

- `bad_request`: the request does not decode, or asks for something malformed or out of
  bounds; sending it again cannot help.
- `not_found`: the room, event, alias or user it names is not known here.
- `forbidden`: the event it would build is refused by the room's auth rules, or the user may
  not do this.
- `conflict`: it clashes with what exists (an alias taken, a transaction ID reused).
- `unavailable`: the roomserver, or a server it had to ask, could not do it now; it may
  succeed later.
- `internal`: a bug or corrupt data here.

Changes are additive (STYLE R7): codes are never renamed nor removed.
"""

from __future__ import annotations

from typing import Literal, get_args

ErrorCode = Literal["bad_request", "not_found", "forbidden", "conflict", "unavailable", "internal"]

ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)

# Stable error code -> the micro service's numeric error code (an HTTP-like status).
ERROR_STATUS: dict[ErrorCode, str] = {
    "bad_request": "400",
    "forbidden": "403",
    "not_found": "404",
    "conflict": "409",
    "internal": "500",
    "unavailable": "503",
}

# The header with the stable code (the micro service's own headers carry the status).
ERROR_CODE_HEADER = "Roomserver-Error"

__all__ = ["ERROR_CODES", "ERROR_CODE_HEADER", "ERROR_STATUS", "ErrorCode"]
