"""History visibility for a remote server: may server S see event E? Pure functions.

Spec: https://spec.matrix.org/latest/client-server-api/#history-visibility and the
server-server API's rule that a server is only sent events one of its users may see
(https://spec.matrix.org/latest/server-server-api/#retrieving-events-after-a-join -- "servers
should only return events the requesting server is allowed to see").

The decision is taken on the state *after* the event (so a server's own join is visible to it,
as in Synapse's `filter_events_for_server`):
- `world_readable` and `shared` (and any value we do not know, which the spec says to treat as
  `shared`) let every server see the event;
- `invited`: visible when one of the server's users is joined or invited at the event;
- `joined`: visible when one of the server's users is joined at the event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from worker.core.events import MEMBER, Event, StateKey

HISTORY_VISIBILITY: StateKey = ("m.room.history_visibility", "")


def server_of(user_id: str) -> str:
    """The server name of a user ID (`@local:server`, the server may carry a port)."""
    _, sep, server = user_id.partition(":")
    return server if sep else ""


def history_visibility(event: Event | None) -> str:
    """The visibility set by an m.room.history_visibility event; `shared` when there is none."""
    if event is None:
        return "shared"
    value = event.content.get("history_visibility")
    return value if isinstance(value, str) else "shared"


def member_keys_of_server(state_keys: Iterable[StateKey], server_name: str) -> list[StateKey]:
    """The member entries of a state whose user belongs to `server_name`."""
    return sorted(
        k for k in state_keys if k[0] == MEMBER and server_of(k[1]) == server_name
    )


def server_may_see(
    visibility: str, server_members: Mapping[StateKey, Event]
) -> bool:
    """The decision, given the visibility at the event and the server's members at it."""
    if visibility not in ("invited", "joined"):
        return True
    memberships = {e.membership for e in server_members.values()}
    if "join" in memberships:
        return True
    return visibility == "invited" and "invite" in memberships
