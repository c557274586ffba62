"""trainwatch: Keras 3 callbacks that watch a neural network while it trains."""

__version__ = "0.1.0"
