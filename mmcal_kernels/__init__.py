"""mmcal_kernels: fused kernels for pre-fusion calibration of multimodal features.

SPEC.md (shipped beside the repository) defines the function; ``reference``
computes it in plain PyTorch, and every other backend is tested against it.
"""

from . import _cpp, backends, ops, reference

_cpp.register_backends()  # "cpu" and "cuda": usable where the compiled extension loads
from .fusion import CalibratedFusion
from .module import PreFusionCalibration
from .reference import GateParams

__version__ = "0.1.0"

__all__ = ["CalibratedFusion", "GateParams", "PreFusionCalibration", "backends", "ops", "reference", "__version__"]
