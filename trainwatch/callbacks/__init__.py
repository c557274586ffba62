"""trainwatch's Keras callbacks."""

from trainwatch.callbacks.base import Monitor, RunContext

__all__ = ["Monitor", "RunContext"]
