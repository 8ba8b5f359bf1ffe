"""worker.observability: metrics (`metrics`), structured logging (`logging`) and the HTTP
endpoint for `/metrics`, `/healthz` and `/readyz` (`http`).

Any layer but the pure core may import it; it imports nothing else of the worker.
"""
