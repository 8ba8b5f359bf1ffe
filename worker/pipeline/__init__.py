"""The input pipeline (DESIGN §2): validate, dedupe, fill gaps, auth, state, persist, publish.

`Pipeline(store, relay, federation=None).handle(room_id, input, *, delivery, in_progress)`
is the bus's handler; the ports it needs are in `worker.pipeline.ports`. Imported by
`worker.app` (which wires it); it imports only the core, the messages and observability.

- `pipeline`: the steps in order. `validate` (step 2, with the content hash),
  `dependencies` (duplicates, prev/auth events needed and missing), `fetch_missing`
  (missing events through the federation port), `authstep` (auth and soft-fail), `state`
  (the state before an event, resolution), `latest` (extremities and current state),
  `memberships`, `redactions`, `outputs` and `events` (what is stored and published),
  `flusher` (publishing in the background), `model` (the values between steps).
"""

from worker.pipeline.fetch_missing import GapSettings
from worker.pipeline.pipeline import Pipeline

__all__ = ["GapSettings", "Pipeline"]
