"""vpsd: point-in-time snapshots of QEMU virtual private servers behind a REST API."""

__version__ = "0.1.0"
