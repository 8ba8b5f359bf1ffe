"""worker.query: how other services ask the roomserver about rooms (DESIGN §4 "Queries").

    handlers.py    one plain async function per query, over the `QueryStore` port
    ports.py       `QueryStore` (what the handlers read) and `QueryEvent`
    visibility.py  history visibility for remote servers (pure)
    service.py     the NATS micro service `roomserver`, `<prefix>.query.<name>` per endpoint
    homeserver.py  the queries the rest of a homeserver asks (sync, client API, federation,
                   user directory), over the `HomeserverStore` port of homeserver_ports.py
    hierarchy.py   `room_hierarchy`: the rooms of a space, walked as Synapse walks them

The wire types are in `worker.messages.query` and `worker.messages.query_homeserver`; the
PostgreSQL implementations of the ports are `worker.storage.query_reads.PostgresQueryReads`
and `worker.storage.homeserver_reads.PostgresHomeserverReads`, built by `worker.app` and
handed to the service. Who may import it: the adapters that implement its ports
(`worker.storage`), the app and tests. It imports only `worker.messages`, the core and
observability: never storage, the bus or the app (an import-linter contract).
"""

from worker.query.handlers import HANDLERS, QueryFailed, answer
from worker.query.ports import QueryEvent, QueryStore
from worker.query.service import QueryService, start_query_service

__all__ = [
    "HANDLERS",
    "QueryEvent",
    "QueryFailed",
    "QueryService",
    "QueryStore",
    "answer",
    "start_query_service",
]
