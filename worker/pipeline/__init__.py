"""The input pipeline (DESIGN §2): validate, dedupe, fill gaps, auth, state, persist, publish.

`Pipeline(store, relay, federation=None).handle(room_id, input, *, delivery, in_progress)`
is the bus's handler; the ports it needs are in `worker.pipeline.ports`.
"""

from worker.pipeline.pipeline import Pipeline

__all__ = ["Pipeline"]
