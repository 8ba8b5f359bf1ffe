"""Outcomes of processing an event, and rejections as values (STYLE R5).

A rejection is not an exception: auth and format checks return a `Rejection`, and the shell
decides what to do with it (store it, reply, ack).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    SOFT_FAILED = "soft_failed"
    REJECTED = "rejected"
    OUTLIER = "outlier"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused.

    `code` is stable and machine-readable (snake_case, e.g. `sender_not_in_room`); `reason` is
    a sentence for the sender; `rule` names the spec step that failed (e.g. "member.join.5").
    """

    code: str
    reason: str
    rule: str = ""
