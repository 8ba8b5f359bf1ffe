"""roomserver: the Matrix roomserver worker."""

__version__ = "0.1.0"
