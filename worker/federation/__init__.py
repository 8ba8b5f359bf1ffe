"""worker.federation: gap filling's way out, the NATS adapter of the pipeline's
`FederationClient` port (requests to the federation service over NATS).

Who may import it: `worker.app`, which hands the client to the pipeline, and tests. It
imports the messages and the core, never storage, the bus or the app (an import-linter
contract).
"""

from worker.federation.client import FederationUnavailable, NatsFederationClient

__all__ = ["FederationUnavailable", "NatsFederationClient"]
