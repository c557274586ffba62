"""TensorBoard event files without TensorFlow: writing, reading, images.

Built on the `tensorboard` package and numpy only; nothing here imports
TensorFlow or Keras.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from trainwatch.tensorboard import SummaryWriter, image_grid, read_events
    >>> log_dir = tempfile.mkdtemp()
    >>> with SummaryWriter(log_dir + "/train") as writer:
    ...     writer.scalar("loss", 2.3, step=0)
    ...     writer.image("filters", image_grid(np.random.randn(8, 5, 5)), step=0)
    >>> runs = read_events(log_dir)
    >>> sorted(runs), runs["train"].images["filters"][0].width
    (['train'], 19)
"""

from trainwatch.tensorboard.images import image_grid
from trainwatch.tensorboard.png import decode_png, encode_png, to_uint8
from trainwatch.tensorboard.reader import (
    HistogramEvent,
    ImageEvent,
    RunData,
    ScalarEvent,
    TextEvent,
    read_events,
)
from trainwatch.tensorboard.writer import SummaryWriter

__all__ = [
    "HistogramEvent",
    "ImageEvent",
    "RunData",
    "ScalarEvent",
    "SummaryWriter",
    "TextEvent",
    "decode_png",
    "encode_png",
    "image_grid",
    "read_events",
    "to_uint8",
]
