"""crate: a local-first secrets manager for developers."""

__version__ = "0.1.0"
