"""worker.inspect: the room inspector behind `roomserver inspect` and `roomserver graph`.

`reads.load_room` reads one room from PostgreSQL into a `RoomDump`; `model` analyses it
(summary, forks, conflicts at merges, layout) without I/O; `svg.render` draws the DAG.
An operator tool: only `worker.commands` and tests import it; it reads through storage.
"""

from worker.inspect.model import Conflict, EventInfo, Merge, RoomDump, Summary, summarize
from worker.inspect.reads import InspectError, load_room, room_ids
from worker.inspect.svg import event_count, render

__all__ = [
    "Conflict",
    "EventInfo",
    "InspectError",
    "Merge",
    "RoomDump",
    "Summary",
    "event_count",
    "load_room",
    "render",
    "room_ids",
    "summarize",
]
