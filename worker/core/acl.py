"""Server access control lists: may a server take part in a room? (pure, synchronous)

Spec: https://spec.matrix.org/latest/client-server-api/#server-access-control-lists-acls-for-rooms
(`m.room.server_acl`). The room's current ACL event names `allow` and `deny` lists of globs and
an `allow_ip_literals` flag; a server is allowed when it is not an IP literal (unless those are
allowed), matches no `deny` glob, and matches some `allow` glob. A room without an ACL event
allows every server.

Where the spec's text leaves room, we do what Synapse does (DESIGN §1 "Converge with the
network"; Synapse `storage/controllers/state.py::server_acl_evaluator_from_event` and the Rust
`acl::ServerAclEvaluator` with `push::utils::glob_to_regex`):

- content is read leniently: a non-boolean `allow_ip_literals` counts as true, a non-list
  `allow`/`deny` as an empty list, and non-string entries of a list are skipped;
- a glob matches the *whole* name, case-insensitively; `*` is any run of characters (empty
  too) and `?` exactly one; every other character, `.` included, is literal;
- an IPv6 literal is anything that starts with `[`; an IPv4 literal is a strict dotted quad
  (no leading zeros), so `1.2.3` or `01.2.3.4` are names, not literals;
- the name is checked without its port (`example.org:8448` is checked as `example.org`),
  split the way Synapse's `parse_server_name` splits it: at the last colon, except for a
  bracketed IPv6 literal, which keeps its colons.

Note that an allow list that is absent or empty denies everyone, the server that sent the
ACL included: that is what the spec's rules say, and it is what a redacted ACL event becomes
(its content is stripped), so a redaction of the ACL shuts the room to federation.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ACL_KEY = ("m.room.server_acl", "")

# Runs of literal characters, then runs of wildcards (as Synapse splits a glob).
_RUNS = re.compile(r"([^?*]*)([?*]*)")


def glob_pattern(glob: str) -> re.Pattern[str]:
    """The compiled regular expression of one ACL glob (whole name, any case).

    A run of wildcards becomes one bounded repetition (`?*?` is "at least two characters"),
    which keeps matching linear whatever the glob: a glob is written by a room's moderators,
    who may be hostile to our CPU.
    """
    parts: list[str] = []
    for literal, wildcards in _RUNS.findall(glob):
        parts.append(re.escape(literal))
        if wildcards:
            count = wildcards.count("?")
            parts.append(f".{{{count},}}" if "*" in wildcards else f".{{{count}}}")
    # `.` does not match a newline, as in Synapse's regex crate; \A and \Z anchor the whole.
    return re.compile(r"\A" + "".join(parts) + r"\Z", re.IGNORECASE)


def host_of(server_name: str) -> str:
    """`server_name` without a `:port` suffix (Synapse `parse_server_name`'s host part)."""
    if server_name.endswith("]"):
        # A bracketed IPv6 literal without a port: its colons are part of it.
        return server_name
    return server_name.rsplit(":", 1)[0]


def is_ip_literal(host: str) -> bool:
    """An IPv6 literal (`[...]`, by its bracket alone) or a strict dotted-quad IPv4 address."""
    if host.startswith("["):
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        return []
    return [s for s in value if isinstance(s, str)]


@dataclass(frozen=True, slots=True)
class ServerAcl:
    """A parsed ACL: the compiled globs and the IP literal flag."""

    allow_ip_literals: bool
    allow: tuple[re.Pattern[str], ...]
    deny: tuple[re.Pattern[str], ...]

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> ServerAcl:
        """Parse an `m.room.server_acl` content, skipping what Synapse skips."""
        literals = content.get("allow_ip_literals", True)
        return cls(
            allow_ip_literals=literals if isinstance(literals, bool) else True,
            allow=tuple(glob_pattern(g) for g in _strings(content.get("allow"))),
            deny=tuple(glob_pattern(g) for g in _strings(content.get("deny"))),
        )

    def allows_host(self, host: str) -> bool:
        """The spec's order: IP literals, then `deny`, then `allow`; anything else is denied.

        `host` must have no port: see `allows`."""
        if not self.allow_ip_literals and is_ip_literal(host):
            return False
        if any(p.match(host) for p in self.deny):
            return False
        return any(p.match(host) for p in self.allow)

    def allows(self, server_name: str) -> bool:
        """May `server_name` (a port, if any, is ignored) take part in the room?"""
        return self.allows_host(host_of(server_name))


def server_allowed(content: Mapping[str, Any] | None, server_name: str) -> bool:
    """`server_name` against an ACL content; None (the room has no ACL) allows everyone."""
    if content is None:
        return True
    return ServerAcl.from_content(content).allows(server_name)


def denial_reason(server_name: str) -> str:
    """The human sentence that goes with a refusal (the code is `server_acl_denied`)."""
    return f"the room's m.room.server_acl denies server {host_of(server_name)!r}"
