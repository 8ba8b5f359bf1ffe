"""Gap filling's way out: the NATS adapter of the pipeline's `FederationClient` port."""

from worker.federation.client import FederationUnavailable, NatsFederationClient

__all__ = ["FederationUnavailable", "NatsFederationClient"]
