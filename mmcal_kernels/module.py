"""The modules: ``PreFusionCalibration``, the drop-in that goes in front of a
fusion backbone, and ``CalibratedFusion``, which puts it in front of an
existing fusion module, unchanged."""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import backends, checks, functional
from .spec import GateParams


def _weight_and_bias(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """A linear layer's registered weight and bias; where either is not a
    registered parameter (a parametrization computes it, FSDP swapped it for a
    plain attribute), what attribute access gives."""
    own = layer._parameters
    weight, bias = own.get("weight"), own.get("bias")
    if weight is None or bias is None:
        return layer.weight, layer.bias
    return weight, bias


# Where each GateParams field lives in the module: an error about a parameter
# names it as the user can reach it (``gate_dim.1.weight``), not by its place
# in the functional API's lists (``params[1].dim_weight``).
_LAYER_OF_FIELD = {
    "proj_weight": ("proj", "weight"), "proj_bias": ("proj", "bias"),
    "hidden_weight": ("gate_hidden", "weight"), "hidden_bias": ("gate_hidden", "bias"),
    "instance_weight": ("gate_instance", "weight"), "instance_bias": ("gate_instance", "bias"),
    "dim_weight": ("gate_dim", "weight"), "dim_bias": ("gate_dim", "bias"),
}  # fmt: skip


def layer_param_name(m: int, field: str) -> str:
    """The module's name of modality ``m``'s ``field`` (a ``GateParams`` field)."""
    layers, attr = _LAYER_OF_FIELD[field]
    return f"{layers}.{m}.{attr}"


class ZeroInitLinear(nn.Linear):
    """A linear layer whose initialisation is zeros (docs/spec.md's last gate
    layers). Deferred initialisation (a module built on ``meta``, then
    ``to_empty`` and each submodule's ``reset_parameters``, as FSDP
    materialises one) keeps the zeros, and with them the identity at start."""

    def reset_parameters(self) -> None:
        _zero_(self)


def _zero_(layer: nn.Module) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class PreFusionCalibration(nn.Module):
    """Calibrates each modality's features against the others before fusion (docs/spec.md).

    Args:
        dims: channel count ``D_m`` of each modality (at least 2 modalities).
        shared_dim: ``d``, the width of the shared summary space.
        hidden_dim: ``r``, the gate network's hidden width (default ``d``).
        layouts: ``"sequence"`` (``[B, P, D]``) or ``"spatial"`` (``[B, D, *S]``),
            one string for all modalities or a list with one per modality.
        backend: ``"auto"`` (the fastest usable backend for the inputs' device),
            or a name from ``mmcal_kernels.backends.names()``.

    The last gate layers start at zero, so a freshly attached module is the
    identity: it changes nothing until it learns.
    """

    def __init__(
        self,
        dims: Sequence[int],
        *,
        shared_dim: int = 128,
        hidden_dim: Optional[int] = None,
        layouts: Union[str, Sequence[str]] = "sequence",
        backend: str = "auto",
    ):
        super().__init__()
        dims = checks.check_sizes(dims, "dims")
        if len(dims) < 2:
            raise ValueError(f"dims: calibration compares modalities, so it needs at least 2; got {len(dims)}")
        shared_dim = checks.check_size(shared_dim, "shared_dim")
        hidden_dim = shared_dim if hidden_dim is None else checks.check_size(hidden_dim, "hidden_dim")
        self.dims = dims
        self.shared_dim = shared_dim
        self.hidden_dim = hidden_dim
        self.layouts = checks.normalize_layouts(layouts, len(dims))
        self.backend = backends.check_name(backend)

        cue_dim = 2 * shared_dim + 2
        self.proj = nn.ModuleList(nn.Linear(d, shared_dim) for d in dims)
        self.gate_hidden = nn.ModuleList(nn.Linear(cue_dim, hidden_dim) for _ in dims)
        self.gate_instance = nn.ModuleList(ZeroInitLinear(hidden_dim, 1) for _ in dims)
        self.gate_dim = nn.ModuleList(ZeroInitLinear(hidden_dim, d) for d in dims)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        # Checked where it is set, not at the next call: a typo names itself.
        self._backend = backends.check_name(name)

    @property
    def num_modalities(self) -> int:
        return len(self.dims)

    def reset_gates(self) -> None:
        """Zero the last gate layers: the module becomes the identity again."""
        for layer in (*self.gate_instance, *self.gate_dim):
            _zero_(layer)  # not layer.reset_parameters(): a layer swapped in, or unpickled, may be a plain Linear

    def reset_parameters(self) -> None:
        """Every parameter to its initial distribution (docs/spec.md, "Parameters"):
        the projections and hidden layers as ``nn.Linear`` does, the last gate
        layers zeros."""
        for layer in (*self.proj, *self.gate_hidden):
            layer.reset_parameters()
        self.reset_gates()  # zeros whatever class a gate layer is now (one swapped in may be a plain Linear)

    def gate_params(self) -> list[GateParams]:
        """The parameters of each modality in the order the functional API takes."""
        # Read from the layers' parameter dicts: nn.Module.__getattr__ costs
        # about 1.6 us a name here, 40 us of every eager forward for 24 names.
        layers = self._modules
        return [
            GateParams(*_weight_and_bias(p), *_weight_and_bias(h), *_weight_and_bias(i), *_weight_and_bias(g))
            for p, h, i, g in zip(layers["proj"], layers["gate_hidden"], layers["gate_instance"], layers["gate_dim"])
        ]

    def resolved_backend(self, device: Optional[torch.device] = None) -> str:
        """The backend a forward on ``device`` (default: the parameters') will use."""
        device = device or self.proj[0].weight.device
        return backends.resolve(self.backend, torch.device(device).type).name

    def forward(
        self,
        features: Sequence[Tensor],
        masks: Optional[Sequence[Optional[Tensor]]] = None,
        present: Optional[Tensor] = None,
        return_diagnostics: bool = False,
    ):
        """Calibrate ``features`` (one tensor per modality).

        Args:
            features: per modality, ``[B, P, D_m]`` for a ``"sequence"`` layout or
                ``[B, D_m, *S]`` for ``"spatial"`` (``D_m`` the module's ``dims[m]``;
                one float dtype for all, any strides).
            masks: per modality, None or a bool ``[B, P]`` validity mask for a
                ``"sequence"`` input: True marks a REAL position (Hugging Face's
                ``attention_mask`` convention, the opposite of
                ``nn.MultiheadAttention``'s ``key_padding_mask``).
            present: bool ``[B, M]``; False marks modality ``m`` missing for
                sample ``b``; it then passes through unchanged.
            return_diagnostics: also return the dict of agreement, support,
                conflict, instance_gate and dimension_gates.

        Returns:
            The list of calibrated features, each shaped, strided and typed like
            its input; with ``return_diagnostics``, ``(list, dict)``.

        Raises:
            ValueError, TypeError: bad input (docs/spec.md, "Bad input"), naming
                the argument, before any kernel runs.
        """
        return self._call(functional._calibrate, features, masks, present, return_diagnostics)

    def calibrate_(
        self,
        features: Sequence[Tensor],
        masks: Optional[Sequence[Optional[Tensor]]] = None,
        present: Optional[Tensor] = None,
        return_diagnostics: bool = False,
    ):
        """Inference only: ``forward``'s values written into ``features`` in place
        (no output memory). Returns the same tensors (and the diagnostics).
        The module's own parameters are read without recording, but a feature
        that needs a gradient while grad mode is on is refused, as in
        ``functional.calibrate_``."""
        if isinstance(features, (list, tuple)):  # anything else: the functional names the argument
            checks.refuse_grad_in_place([x for x in features if isinstance(x, Tensor)])
        with torch.no_grad():
            return self._call(functional._calibrate_, features, masks, present, return_diagnostics)

    def _call(self, fn, features, masks, present, return_diagnostics):
        if not (getattr(self, "_hooks_warned", False) or torch.compiler.is_compiling()):
            self._warn_about_layer_hooks()  # eager only: the warning's frame walk would break a traced graph
        return fn(features, self.gate_params(), self.layouts, masks, present, return_diagnostics, self.backend,
                  self.dims, layer_param_name)

    def _warn_about_layer_hooks(self) -> None:
        """The gate layers hold parameters and are never called: hooks on them
        (torch.nn.utils.prune, logging hooks) would silently not run."""
        hooked = [f"{name}.{i}" for name, layers in self._modules.items() for i, layer in layers._modules.items()
                  if layer._forward_hooks or layer._forward_pre_hooks]  # fmt: skip
        if hooked:
            self._hooks_warned = True
            warnings.warn(
                f"PreFusionCalibration: forward hooks on its layers ({', '.join(hooked)}) do not run: "
                "the module reads their parameters and never calls them. To transform a weight, use "
                "torch.nn.utils.parametrize (this warning is given once)",
                UserWarning,
                stacklevel=checks.user_stacklevel(),
            )

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every module it is given or finds
        # inside one; without it, scripting fails deep in the backends' Python
        # with a TorchScript frontend error that names none of the choices below.
        raise RuntimeError(
            "PreFusionCalibration: torch.jit.script cannot compile this module (its backends choose kernels in "
            "Python and call torch.library custom ops). For a graph to deploy, use torch.export.export (every "
            "backend) or torch.compile; torch.jit.trace traces the reference backend"
        )

    def extra_repr(self) -> str:
        # repr never raises: a checkpoint trained on a GPU is printed on a CPU machine,
        # a module built on meta before it is materialised.
        device = self.proj[0].weight.device.type
        try:
            chosen, why_not = repr(self.resolved_backend()), None
        except (RuntimeError, ValueError) as exc:
            chosen, why_not = f"none: {exc}", exc
        if self.backend == "auto":
            backend = f"{self.backend!r} -> {chosen} on {device}"
        else:
            backend = repr(self.backend) + (f" (not usable on {device} here: {why_not})" if why_not else "")
        return (
            f"dims={self.dims}, shared_dim={self.shared_dim}, hidden_dim={self.hidden_dim}, "
            f"layouts={self.layouts}, backend={backend}"
        )


class CalibratedFusion(nn.Module):
    """``fusion(*calibration(args[:M]), *args[M:], **kwargs)``.

    The first ``M`` positional arguments (``M = calibration.num_modalities``)
    are the features; they are calibrated and handed on in their places. The
    rest of the arguments reach ``fusion`` untouched. ``masks`` and ``present``
    are consumed by the calibration, and also passed to ``fusion`` as keyword
    arguments of those names when ``forward_masks=True``.

    The fusion module keeps its own state_dict keys under ``fusion.``, so a
    trained backbone loads with ``wrapped.fusion.load_state_dict(...)``.
    """

    def __init__(self, fusion: nn.Module, calibration: PreFusionCalibration, forward_masks: bool = False):
        super().__init__()
        if not isinstance(calibration, PreFusionCalibration):
            raise TypeError(f"calibration: expected a PreFusionCalibration, got {type(calibration).__name__}")
        if not callable(fusion):
            raise TypeError(f"fusion: expected a callable module, got {type(fusion).__name__}")
        self.fusion = fusion
        self.calibration = calibration
        self.forward_masks = forward_masks

    def forward(self, *args, masks=None, present=None, **kwargs):
        """``fusion(*calibration(args[:M], masks, present), *args[M:], **kwargs)``.

        ``masks`` and ``present`` are those of ``PreFusionCalibration.forward``;
        with ``forward_masks=True`` they also reach ``fusion`` as keywords.
        Fewer than ``M`` positional arguments raise ``ValueError``.
        """
        num = self.calibration.num_modalities
        if len(args) < num:
            raise ValueError(
                f"args: the first {num} positional arguments must be the modality features, got {len(args)} arguments"
            )
        calibrated = self.calibration(list(args[:num]), masks=masks, present=present)
        if self.forward_masks:
            kwargs = dict(kwargs, masks=masks, present=present)
        return self.fusion(*calibrated, *args[num:], **kwargs)

    def extra_repr(self) -> str:
        return f"forward_masks={self.forward_masks}"
