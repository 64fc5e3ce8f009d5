"""mmcal_kernels: fused kernels for pre-fusion calibration of multimodal features.

docs/spec.md defines the function; ``reference``
computes it in plain PyTorch, and every other backend is tested against it.
"""

from . import _cpp, _triton, backends, ops, reference

_cpp.register_backends()  # "cpu" and "cuda": usable where the compiled extension loads
_triton.register_backend()  # "triton": usable on a GPU, or on CPU tensors under TRITON_INTERPRET=1
from .fusion import CalibratedFusion
from .module import PreFusionCalibration
from .reference import GateParams

__version__ = "0.1.0"

__all__ = ["CalibratedFusion", "GateParams", "PreFusionCalibration", "backends", "ops", "reference", "__version__"]
