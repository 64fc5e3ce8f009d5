"""mmcal_kernels: fused kernels for pre-fusion calibration of multimodal features.

docs/spec.md defines the function (``spec`` states its facts, ``reference``
computes it in plain PyTorch); every other backend is tested against it.
"""

from . import backends, functional, reference, spec
from .backends import cpp as _cpp_backends
from .backends import triton as _triton_backends

_cpp_backends.register()  # "cpu" and "cuda": usable where the compiled extension loads
_triton_backends.register()  # "triton": usable on a GPU, or on CPU tensors under TRITON_INTERPRET=1
from .module import CalibratedFusion, PreFusionCalibration  # noqa: E402
from .spec import GateParams  # noqa: E402

__version__ = "0.1.0"

__all__ = ["CalibratedFusion", "GateParams", "PreFusionCalibration", "backends", "functional", "reference", "spec",
           "__version__"]  # fmt: skip
