"""Every argument check of the Python side (docs/spec.md, "Bad input"): the
public entry points' (``functional``, ``module``), the Triton ops' (which have
no C++ to check for them), and what an in-place write must refuse.

Each check raises before any computation, naming the argument, what it got and
what it expects. They look only at metadata (shapes, dtypes, devices), so they
are traceable by ``torch.compile`` with dynamic shapes: a comparison of sizes
becomes a guard, never a graph break. (The exceptions, the in-place memory
checks and the mask warnings, say so and step aside while tracing.)
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .spec import LAYOUTS, GateParams, channels, layout_name

FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPUTE_DTYPES = (torch.float32, torch.float64)
PARAM_DTYPES = FEATURE_DTYPES  # any of them, cast once to the compute dtype (float8 cannot promote)
PER_MODALITY = len(GateParams._fields)  # parameters per modality in the ops' flat lists


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def normalize_layouts(layouts, num: int, name: str = "layouts") -> list[str]:
    """One layout string for all modalities, or a list with one per modality."""
    if isinstance(layouts, str):
        if layouts not in LAYOUTS:
            raise ValueError(f"{name}: expected one of {LAYOUTS}, got {layouts!r}")
        layouts = [layouts] * num
    if not isinstance(layouts, (list, tuple)):
        raise TypeError(f"{name}: expected one of {LAYOUTS} or a list with one per modality, got {type(layouts).__name__}")
    layouts = list(layouts)
    if len(layouts) != num:
        raise ValueError(f"{name}: expected one entry per modality ({num}), got {len(layouts)}")
    for i, lay in enumerate(layouts):
        if lay not in LAYOUTS:
            raise ValueError(f"{name}[{i}]: expected one of {LAYOUTS}, got {lay!r}")
    return layouts


def check_strided(t: Tensor, name: str) -> None:
    """Dense tensors only: the kernels read strides, and a sparse or mkldnn
    tensor has none (the C++ ops would fail in the dispatcher, naming no argument)."""
    if t.layout is not torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")


def check_feature(x, layout: str, name: str, dtypes=FEATURE_DTYPES) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    check_strided(x, name)
    if x.dtype not in dtypes:
        raise TypeError(f"{name}: unsupported dtype {x.dtype}; expected one of {_dtype_names(dtypes)}")
    if layout == "sequence" and x.dim() != 3:
        raise ValueError(f"{name}: a 'sequence' input must be [B, P, D] (3 dims), got shape {tuple(x.shape)}")
    if layout == "spatial" and x.dim() < 2:
        raise ValueError(f"{name}: a 'spatial' input must be [B, D, *S] (2 or more dims), got shape {tuple(x.shape)}")


def check_mask(mask, x: Tensor, layout: str, name: str) -> None:
    if mask is None:
        return
    if layout != "sequence":
        raise ValueError(f"{name}: masks apply to 'sequence' inputs only; this modality is 'spatial', pass None")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name}: expected a bool tensor (True = valid position), got {got}")
    check_strided(mask, name)
    if mask.dim() != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] != x.shape[1]:
        raise ValueError(f"{name}: expected shape [B, P] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"{name}: on {mask.device}, but the features are on {x.device}")


def check_present(present, batch: int, num: int, device: torch.device, name: str = "present") -> None:
    if present is None:
        return
    if not isinstance(present, Tensor) or present.dtype != torch.bool:
        got = present.dtype if isinstance(present, Tensor) else type(present).__name__
        raise TypeError(f"{name}: expected a bool tensor (False = modality missing), got {got}")
    check_strided(present, name)
    if present.dim() != 2 or present.shape[0] != batch or present.shape[1] != num:
        raise ValueError(f"{name}: expected shape [B, M] = ({batch}, {num}), got {tuple(present.shape)}")
    if present.device != device:
        raise ValueError(f"{name}: on {present.device}, but the features are on {device}")


def check_like_first(x: Tensor, first: Tensor, i: int, name: str) -> None:
    """One call's features share one dtype, one device and one batch size."""
    if x.dtype != first.dtype:
        raise TypeError(f"{name}[{i}]: dtype {x.dtype} differs from {name}[0]'s {first.dtype}; all features of one call share one dtype")
    if x.device != first.device:
        raise ValueError(f"{name}[{i}]: on {x.device}, but {name}[0] is on {first.device}")
    if x.shape[0] != first.shape[0]:
        raise ValueError(f"{name}[{i}]: batch size {x.shape[0]} differs from {name}[0]'s {first.shape[0]}")


def check_features(
    features,
    layouts,
    masks=None,
    present=None,
    dims: Optional[Sequence[int]] = None,
    dtypes=FEATURE_DTYPES,
) -> tuple[list[Tensor], list[str], list[Optional[Tensor]]]:
    """All of docs/spec.md's checks on one call. Returns (features, layouts, masks) as lists."""
    if isinstance(features, Tensor) or not isinstance(features, (list, tuple)):
        raise TypeError(f"features: expected a list of tensors, one per modality, got {type(features).__name__}")
    features = list(features)
    num = len(features)
    if num < 2:
        raise ValueError(f"features: calibration compares modalities, so it needs at least 2; got {num}")
    if dims is not None and num != len(dims):
        raise ValueError(f"features: expected {len(dims)} modalities, one per entry of dims {list(dims)}, got {num}")
    layouts = normalize_layouts(layouts, num)
    if masks is None:
        masks = [None] * num
    elif not isinstance(masks, (list, tuple)) or len(masks) != num:
        got = f"{len(masks)} entries" if isinstance(masks, (list, tuple)) else f"a {type(masks).__name__}"
        raise ValueError(f"masks: expected a list with one entry (tensor or None) per modality ({num}), got {got}")
    masks = list(masks)

    first = features[0]
    for i, (x, lay) in enumerate(zip(features, layouts)):
        check_feature(x, lay, f"features[{i}]", dtypes)
        check_like_first(x, first, i, "features")
        dm = channels(x, lay)
        if dims is not None and dm != dims[i]:
            where = "last dim" if lay == "sequence" else "dim 1"
            raise ValueError(f"features[{i}]: expected {dims[i]} channels ({where} of a {lay!r} input), got {dm} in shape {tuple(x.shape)}")
        check_mask(masks[i], x, lay, f"masks[{i}]")
    check_present(present, first.shape[0], num, first.device)
    return features, layouts, masks


def _as_list(values, name: str, expected: str) -> list:
    """``values`` (any iterable but a tensor) as a list, or a TypeError naming
    ``name``, where ``list()`` would say only "object is not iterable"."""
    if not isinstance(values, Tensor):
        try:
            return list(values)
        except TypeError:
            pass
    raise TypeError(f"{name}: expected {expected}, got {type(values).__name__}")


ParamName = Callable[[int, str], str]  # (modality, GateParams field) -> how a message names that tensor


def _flat_param_name(name: str) -> ParamName:
    return lambda m, field: f"{name}[{m}].{field}"


def check_params(params: Sequence[GateParams], device: torch.device, name: str = "params",
                 param_name: Optional[ParamName] = None) -> list[GateParams]:  # fmt: skip
    """``param_name`` names one tensor in a message (default ``params[m].field``;
    the module passes its layers' names, ``proj.0.weight``)."""
    label = param_name or _flat_param_name(name)
    checked = []
    for m, p in enumerate(params):
        if isinstance(p, Tensor) or not isinstance(p, (tuple, list)) or len(p) != len(GateParams._fields):
            got = "a tensor" if isinstance(p, Tensor) else f"{type(p).__name__}" + (f" of {len(p)}" if isinstance(p, (tuple, list)) else "")
            raise TypeError(f"{name}[{m}]: expected a GateParams (or a tuple of its {len(GateParams._fields)} tensors), got {got}")
        checked.append(p if isinstance(p, GateParams) else GateParams(*p))
    params = checked
    for m, p in enumerate(params):
        for field, t in zip(GateParams._fields, p):
            if not isinstance(t, Tensor):
                raise TypeError(f"{label(m, field)}: expected a tensor, got {type(t).__name__}")
            if t.dtype not in PARAM_DTYPES:
                raise TypeError(f"{label(m, field)}: expected one of {_dtype_names(PARAM_DTYPES)}, got {t.dtype}")
            if t.device != device:
                raise ValueError(f"{label(m, field)}: on {t.device}, but the features are on {device}")
            if t.layout is not torch.strided:  # check_strided's test, the name built only for the error
                check_strided(t, label(m, field))
    return params


def check_param_list(params, dims: Sequence[int], device: torch.device, name: str = "params",
                     param_name: Optional[ParamName] = None) -> list[GateParams]:  # fmt: skip
    """One GateParams per modality, every shape docs/spec.md gives, one shared ``d``."""
    label = param_name or _flat_param_name(name)
    params = _as_list(params, name, "one GateParams per modality")
    if len(params) != len(dims):
        raise ValueError(f"{name}: expected one GateParams per modality ({len(dims)}), got {len(params)}")
    params = check_params(params, device, name, label)
    for m, (p, dm) in enumerate(zip(params, dims)):
        for field in ("proj_weight", "hidden_weight"):  # their first sizes are d and r, read below
            if getattr(p, field).dim() != 2:
                raise ValueError(f"{label(m, field)}: expected a 2-D weight, got shape {tuple(getattr(p, field).shape)}")
        d = p.proj_weight.shape[0]
        if m and d != params[0].proj_weight.shape[0]:
            raise ValueError(f"{label(m, 'proj_weight')}: shared dim d = {d} differs from {label(0, 'proj_weight')}'s "
                             f"{params[0].proj_weight.shape[0]}; every modality projects into one shared space")  # fmt: skip
        r = p.hidden_weight.shape[0]
        expected = {
            "proj_weight": (d, dm), "proj_bias": (d,),
            "hidden_weight": (r, 2 * d + 2), "hidden_bias": (r,),
            "instance_weight": (1, r), "instance_bias": (1,),
            "dim_weight": (dm, r), "dim_bias": (dm,),
        }  # fmt: skip
        for field, t in zip(GateParams._fields, p):
            if tuple(t.shape) != expected[field]:
                raise ValueError(f"{label(m, field)}: expected shape {expected[field]}, got {tuple(t.shape)}")
    return params


def check_summaries(summaries, name: str = "summaries") -> list[Tensor]:
    """Steps 2-6's input: at least 2 ``[B, D_m]`` tensors in one compute dtype, one batch, one device."""
    summaries = _as_list(summaries, name, "a list of [B, D_m] tensors, one per modality")
    if len(summaries) < 2:
        raise ValueError(f"{name}: calibration compares modalities, so it needs at least 2; got {len(summaries)}")
    first = summaries[0]
    for i, s in enumerate(summaries):
        if not isinstance(s, Tensor) or s.dim() != 2:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"{name}[{i}]: expected a [B, D] tensor, got {got}")
        check_strided(s, f"{name}[{i}]")
        if s.dtype not in COMPUTE_DTYPES or s.dtype != first.dtype:
            raise TypeError(f"{name}[{i}]: expected float32 or float64, the same for all; got {s.dtype} ({name}[0] is {first.dtype})")
        if s.shape[0] != first.shape[0]:
            raise ValueError(f"{name}[{i}]: batch size {s.shape[0]} differs from {name}[0]'s {first.shape[0]}")
        if s.device != first.device:
            raise ValueError(f"{name}[{i}]: on {s.device}, but {name}[0] is on {first.device}")
    return summaries


def check_gate(gate, x: Tensor, layout: str, name: str = "gate") -> None:
    """A gate for ``x``: floating point, ``[B, D]``, on x's device."""
    if not isinstance(gate, Tensor) or not gate.is_floating_point():
        got = gate.dtype if isinstance(gate, Tensor) else type(gate).__name__
        raise TypeError(f"{name}: expected a floating-point tensor, got {got}")
    check_strided(gate, name)
    dm = channels(x, layout)
    if gate.dim() != 2 or gate.shape[0] != x.shape[0] or gate.shape[1] != dm:
        raise ValueError(f"{name}: expected shape [B, D] = ({x.shape[0]}, {dm}), got {tuple(gate.shape)}")
    if gate.device != x.device:
        raise ValueError(f"{name}: on {gate.device}, but x is on {x.device}")


def _holds(ct: torch.dtype, dtype: torch.dtype) -> bool:
    """Whether ``ct`` is a compute dtype (float32 or float64) wide enough to hold ``dtype``."""
    return ct in COMPUTE_DTYPES and torch.promote_types(ct, dtype) == ct


def check_compute_dtype(ct: torch.dtype, x: Tensor, name: str = "compute_dtype") -> None:
    """float32 or float64, wide enough to hold x's dtype."""
    if not _holds(ct, x.dtype):
        raise TypeError(f"{name}: expected float32 or float64, at least as wide as x's {x.dtype}; got {ct}")


def check_size(value, name: str, what: str = "a positive int") -> int:
    """A size argument: a positive int (not a float, str or bool)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name}: expected {what}, got {int(value)}")
    return int(value)


def check_sizes(values, name: str) -> list[int]:
    """A list of channel counts (``dims``): a list or tuple of ints, never a string."""
    if isinstance(values, (str, bytes, Tensor)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: expected a list of ints (one channel count per modality), got {type(values).__name__} {values!r}")
    return [check_size(v, f"{name}[{i}]", "a positive channel count") for i, v in enumerate(values)]


# ---- the kernel ops' own arguments (the Triton ops; the C++ ops check in C++) ----
# Layouts arrive as int codes here. Bad input must be an error that names the
# argument, never an out-of-bounds kernel.


def check_lengths(name: str, items: Sequence, count: int, what: str = "xs") -> None:
    if len(items) != count:
        raise ValueError(f"{name}: expected one entry per tensor of {what} ({count}), got {len(items)}")


def check_op_features(xs: Sequence[Tensor], layouts: Sequence[int], name: str = "xs") -> None:
    if len(xs) == 0:
        raise ValueError(f"{name}: expected at least one tensor")
    check_lengths("layouts", layouts, len(xs), name)
    first = xs[0]
    for i, (x, code) in enumerate(zip(xs, layouts)):
        where = f"{name}[{i}]"
        if code not in (0, 1):
            raise ValueError(f"layouts[{i}]: expected 0 (sequence) or 1 (spatial), got {code}")
        check_feature(x, layout_name(code), where)
        check_like_first(x, first, i, name)


def check_like(t: Tensor, x: Tensor, name: str) -> None:
    """A gradient of ``Y = f(X)``: X's device, shape and dtype, checked in the
    C++ ops' order (``check_grad_like``), so that an argument wrong twice raises
    the same exception on both sides."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    check_strided(t, name)
    if t.device != x.device or t.shape != x.shape:
        raise ValueError(f"{name}: expected {tuple(x.shape)} {x.dtype} on {x.device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")  # fmt: skip
    if t.dtype != x.dtype:  # TypeError, as the C++ ops raise
        raise TypeError(f"{name}: expected dtype {x.dtype}, got {t.dtype}")


def check_call_compute_dtype(ct: torch.dtype, x: Tensor, name: str) -> None:
    """The call's compute dtype (its first gate's, or ds's) against one
    modality's features: ``check_compute_dtype``'s test, worded for a gate or ds."""
    if not _holds(ct, x.dtype):
        raise TypeError(f"{name}: expected the compute dtype (float32 or float64, holding {x.dtype}), got {ct}")


def check_per_channel(g: Tensor, x: Tensor, code: int, name: str, ct: torch.dtype, ct_from: str) -> None:
    """A gate (or ds): ``[B, D]`` in the call's compute dtype ``ct`` (that of
    ``ct_from``), on X's device; the C++ ops' order: shape, dtype, device."""
    if not isinstance(g, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(g).__name__}")
    check_strided(g, name)
    dm = channels(x, layout_name(code))
    if g.dim() != 2 or g.shape[0] != x.shape[0] or g.shape[1] != dm:
        raise ValueError(f"{name}: expected [{x.shape[0]}, {dm}], got {tuple(g.shape)}")
    if g.dtype != ct:
        raise TypeError(f"{name}: expected {ct}, the compute dtype of {ct_from} (one for the call), got {g.dtype}")
    if g.device != x.device:
        raise ValueError(f"{name}: on {g.device}, but the features are on {x.device}")


# ---- in place: what an op must refuse before it writes (as Tensor.mul_ does) ----


def _touched(x: Tensor) -> Tensor:
    """The storage elements a strided view touches: for the views whose overlap
    torch's quick analysis cannot decide (rare, so the index tensor is affordable)."""
    idx = torch.full((), x.storage_offset(), dtype=torch.long, device=x.device)
    for size, stride in zip(x.shape, x.stride()):
        idx = idx.unsqueeze(-1) + torch.arange(size, device=x.device) * stride
    return idx.flatten()


def _overlaps_itself(x: Tensor) -> bool:
    status = torch._debug_has_internal_overlap(x)  # 0 no, 1 yes, 2 too hard to tell
    if status != 2 or x.numel() < 2:
        return status == 1
    return _touched(x).unique().numel() < x.numel()


def _share_elements(a: Tensor, b: Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    if a.element_size() != b.element_size():
        return True  # different element grids on one storage: assume the worst
    return bool(torch.isin(_touched(a), _touched(b)).any())


def check_inplace_targets(xs: Sequence[Tensor], read: Sequence[Tensor] = (), name: str = "features",
                          read_name: str = "gates") -> None:  # fmt: skip
    """Refuse to write ``xs`` in place where the result would be silently wrong
    (elements that overlap, memory shared with another written or read tensor)
    or where torch refuses it (an inference tensor outside inference mode)."""
    from torch._subclasses.fake_tensor import is_fake

    if any(is_fake(t) or t.device.type == "meta" for t in xs):
        return  # tracing: no memory to look at (functionalization orders the writes)
    for i, x in enumerate(xs):
        if x.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError(f"{name}[{i}]: Inplace update to inference tensor outside InferenceMode is not allowed; "
                               "clone it first, or write it inside torch.inference_mode()")  # fmt: skip
        if _overlaps_itself(x):
            raise ValueError(f"{name}[{i}]: more than one element refers to a single memory location (an expanded or "
                             "broadcast view), so writing in place would write them several times; pass x.clone(), "
                             "or use the out-of-place call")  # fmt: skip
        for j in range(i):
            if _share_elements(x, xs[j]):
                raise ValueError(f"{name}[{i}] and {name}[{j}]: share memory, so writing one in place would change "
                                 "the other; pass separate tensors (e.g. .clone() one), or use the out-of-place call")  # fmt: skip
        for j, r in enumerate(read):
            if r is not None and _share_elements(x, r):
                raise ValueError(f"{name}[{i}] and {read_name}[{j}]: share memory, so writing {name}[{i}] in place "
                                 f"would change {read_name}[{j}] while it is read; pass separate tensors")  # fmt: skip


# ---- masks that are valid but probably not what the caller meant ----------

_MASK_LOOKS_LEFT = [8]  # eager calls still looked at: enough to catch a data pipeline's convention
_MASK_WARNED: set = set()


def warn_suspicious_masks(masks: Sequence[Optional[Tensor]], present: Optional[Tensor]) -> None:
    """One warning each, once per process, for masks that are valid input but
    look like a mistake: a present modality with no valid position in a row,
    and masks whose padding sits at the START of every padded row (True =
    PADDING, the key_padding_mask convention, passed where True = valid is
    expected). Only the first calls are looked at, and never while tracing:
    the look reads values (a device sync on a GPU)."""
    # is_compiling() first: Dynamo then reads nothing else, so the counter is no guard (it would
    # recompile the module each time an eager call spends a look).
    if torch.compiler.is_compiling() or _MASK_LOOKS_LEFT[0] <= 0 or all(m is None for m in masks):
        return
    # Under vmap a mask is batched, and reading its values (bool()) raises: the look would make
    # a transform fail or pass by the process's history.
    if torch._C._are_functorch_transforms_active():
        return
    from torch._subclasses.fake_tensor import is_fake

    if any(m is not None and (is_fake(m) or m.device.type == "meta") for m in masks):
        return
    _MASK_LOOKS_LEFT[0] -= 1
    for i, mask in enumerate(masks):
        if mask is None or mask.numel() == 0:
            continue
        empty = ~mask.any(1)
        if present is not None:
            empty &= present[:, i]
        if "empty" not in _MASK_WARNED and bool(empty.any()):
            _MASK_WARNED.add("empty")
            row = int(empty.nonzero()[0, 0])
            warnings.warn(
                f"masks[{i}]: row {row} has no valid position (all False) although the modality is present there, "
                f"so its summary is zero. Masks mark VALID positions with True; if the modality is missing for that "
                f"sample, set present[{row}, {i}] = False (this warning is given once)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        padded = ~mask.all(1) & mask.any(1)
        # Padding first: each padded row is False...False True...True.
        starts_padded = (mask[:, 1:] >= mask[:, :-1]).all(1) & ~mask[:, 0]
        if "inverted" not in _MASK_WARNED and bool(padded.any()) and bool((starts_padded | ~padded).all()):
            _MASK_WARNED.add("inverted")
            warnings.warn(
                f"masks[{i}]: every padded row has its padding at the START (False...False True...True). Masks mark "
                f"VALID positions with True, the opposite of nn.MultiheadAttention's key_padding_mask: if you passed "
                f"a key_padding_mask, pass ~mask (this warning is given once)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )


def refuse_grad_in_place(tensors):
    """calibrate_ records nothing for autograd: where grad mode is on and a
    tensor it reads or writes needs a gradient, that gradient would be
    silently wrong, so it raises (as Tensor.mul_ does on a leaf)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(
            "calibrate_: writes the features in place and records nothing for autograd; "
            "call it under torch.no_grad() or torch.inference_mode(), or use calibrate()"
        )


def refuse_autograd_in_place(xs, gates, op: str) -> None:
    """What csrc/inplace.cpp's Autograd kernel refuses for mmcal::modulate_,
    for an in-place op with no such kernel (Triton's): with grad mode on, a
    written tensor or gate that requires grad, since the op records nothing
    and that gradient would be silently wrong (Tensor.mul_ refuses a leaf)."""
    if not torch.is_grad_enabled():
        return
    hint = (f"the in-place {op} records nothing for autograd; use the out-of-place op, or call it under "
            "torch.no_grad() or torch.inference_mode()")  # fmt: skip
    for i, x in enumerate(xs):
        if x.requires_grad and x.is_leaf:
            raise RuntimeError(f"xs[{i}]: a leaf Variable that requires grad is being used in an in-place operation "
                               f"({op})")  # fmt: skip
        if x.requires_grad:
            raise RuntimeError(f"xs[{i}]: requires grad, and {hint}")
    for i, g in enumerate(gates):
        if g.requires_grad:
            raise RuntimeError(f"gates[{i}]: requires grad, and {hint}")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_NN_MODULE_FILE = os.path.join("torch", "nn", "modules", "module.py")


def user_stacklevel() -> int:
    """The stacklevel of warnings.warn that names the user's line: the first
    frame outside this package and nn.Module's call machinery (the entry
    points are reached at different depths: module, functional)."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_PACKAGE_DIR) or name.endswith(_NN_MODULE_FILE)):
            return level
        frame, level = frame.f_back, level + 1
    return 1
