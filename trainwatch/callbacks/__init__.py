"""trainwatch's Keras callbacks: `TrainWatch` and each monitor on its own."""

from trainwatch.callbacks.base import Monitor, RunContext
from trainwatch.callbacks.distributions import Distributions
from trainwatch.callbacks.first_layer_images import FirstLayerImages
from trainwatch.callbacks.gradient_check import GradientCheck, GradientCheckError
from trainwatch.callbacks.input_init import InputAndInitChecks
from trainwatch.callbacks.loss_curve import LossCurve
from trainwatch.callbacks.sanity_check import SanityCheck
from trainwatch.callbacks.trainwatch import TrainWatch
from trainwatch.callbacks.update_ratio import UpdateRatio

__all__ = [
    "Distributions",
    "FirstLayerImages",
    "GradientCheck",
    "GradientCheckError",
    "InputAndInitChecks",
    "LossCurve",
    "Monitor",
    "RunContext",
    "SanityCheck",
    "TrainWatch",
    "UpdateRatio",
]
