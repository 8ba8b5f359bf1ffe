"""Server ACLs enforced on input: an event from a server the room's ACL denies is refused.

Synapse checks the *origin of the federation transaction* against the room's *current*
`m.room.server_acl` before it looks at the PDUs of that room at all
(`FederationServer._handle_pdus_in_txn` -> `check_server_matches_acl(origin_host, room_id)`),
and then ignores them: they are neither stored nor rejected, so the same event relayed later
by an allowed server is taken. The roomserver is the last place that knows the ACL for
certain, so it does the same for the input's `origin` (the server that gave us the event,
which the federation API sets to the transaction's origin):

- only `kind=new` inputs are checked: they are what a transaction pushes. Outliers and `old`
  events come from our own requests (a join's state, backfill, gap filling), which Synapse
  does not check against the answering server either;
- an input without `origin`, or from this server (`SERVER_NAME`), is ours, not federated;
- the sender's server is not what is checked: an event sent by a denied server's user and
  relayed by an allowed server passes here, as in Synapse (the auth rules decide about it);
- a refused event is not stored (like a gap that cannot be filled), with its own reason code
  `server_acl_denied` and the outcome `rejected`.

The ACL is read from the room's current state by one lookup, which the store nearly always
answers from memory (the room's hot state).
"""

from __future__ import annotations

from worker.core.acl import ACL_KEY, ServerAcl, denial_reason, host_of
from worker.core.outcomes import Rejection
from worker.core.reasons import SERVER_ACL_DENIED
from worker.pipeline.authstep import AuthStateReads
from worker.pipeline.model import Work


async def check_origin_acl(store: AuthStateReads, work: Work, server_name: str) -> Rejection | None:
    """A rejection when the room's current ACL denies the input's origin, else None."""
    origin = work.inp.origin
    if work.kind != "new" or not origin or not work.room_known:
        return None
    if server_name and host_of(origin) == host_of(server_name):
        return None
    current = await store.current_state(work.room_id)
    if current is None:
        return None
    acl = (await store.lookup(current, [ACL_KEY])).get(ACL_KEY)
    if acl is None or ServerAcl.from_content(acl.content).allows(origin):
        return None
    return Rejection(SERVER_ACL_DENIED, denial_reason(origin), "server_acl")
