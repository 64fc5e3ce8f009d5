"""The Triton ops' bodies and the fused forward under fake CUDA tensors with
symbolic sizes, on a machine without a GPU: what ``torch.compile`` runs first
when it meets the ops on a GPU (fake-tensor propagation of each
``triton_op``'s body, with ``wrap_triton`` launching nothing). Passing here
shows the bodies hold no data-dependent host logic (a ``.item()`` or a branch
on a tensor's values would raise on fake tensors) and keep sizes symbolic.

Main pytest process only: the interpreter swaps the kernels for Python ones."""

import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") == "1":
    pytest.skip("runs without the interpreter (fake CUDA tensors need the compiled-kernel path)", allow_module_level=True)

from torch._dynamo.source import ConstantSource  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext  # noqa: E402

from mmcal_kernels import GateParams  # noqa: E402
from mmcal_kernels.compare import randomize_  # noqa: E402
from mmcal_kernels.backends.triton import ops as triton_backend  # noqa: E402


@pytest.fixture
def mode():
    return FakeTensorMode(shape_env=ShapeEnv())


def _fake(mode, name, shape, dynamic, dtype=torch.float32, memory_format=torch.contiguous_format, device="cuda"):
    """A fake tensor on ``device`` whose ``dynamic`` dims are symbols."""
    real = torch.empty(shape, dtype=dtype).contiguous(memory_format=memory_format)
    sizes = [DimDynamic.DYNAMIC if i in dynamic else DimDynamic.STATIC for i in range(len(shape))]
    cpu = mode.from_tensor(real, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes), source=ConstantSource(name))
    with mode:
        return torch.empty_strided(cpu.shape, cpu.stride(), dtype=dtype, device=device)


def _inputs(mode, dtype=torch.bfloat16, device="cuda"):
    xs = [
        _fake(mode, "text", (4, 50, 96), dynamic=(0, 1), dtype=dtype, device=device),
        _fake(mode, "audio", (4, 64, 9, 6), dynamic=(0, 2, 3), dtype=dtype, memory_format=torch.channels_last, device=device),
        _fake(mode, "video", (4, 40), dynamic=(0,), dtype=dtype, device=device),
    ]
    with mode:
        masks = [torch.empty(xs[0].shape[:2], dtype=torch.bool, device=device), None, None]
    return xs, masks, [0, 1, 1]


def _symbolic(size) -> bool:
    return isinstance(size, torch.SymInt) and not size.node.is_constant()


def test_every_op_runs_on_fake_cuda_tensors_with_symbolic_sizes(mode):
    xs, masks, layouts = _inputs(mode)
    assert _symbolic(xs[0].shape[1]) and _symbolic(xs[1].shape[2])
    with mode:
        means = torch.ops.mmcal.triton_summaries(xs, masks, layouts, torch.float32)
        assert [m.device.type for m in means] == ["cuda"] * 3 and all(m.dtype == torch.float32 for m in means)
        assert [m.shape[1] for m in means] == [96, 64, 40] and _symbolic(means[0].shape[0])
        ys = torch.ops.mmcal.triton_modulate(xs, means, layouts)
        assert [y.shape for y in ys] == [x.shape for x in xs] and [y.stride() for y in ys] == [x.stride() for x in xs]
        dgs = torch.ops.mmcal.triton_gate_grads(ys, xs, layouts, torch.float32)
        assert [d.shape for d in dgs] == [m.shape for m in means]
        dxs = torch.ops.mmcal.triton_input_grads(xs, ys, means, masks, dgs, layouts)
        assert [d.shape for d in dxs] == [x.shape for x in xs]
        torch.ops.mmcal.triton_modulate_(xs, means, layouts)


def test_fused_forward_runs_on_fake_tensors_with_symbolic_sizes(mode):
    # Fake CPU tensors: this CPU-only torch cannot build some constants
    # (torch.eye in steps 2-6) on a fake CUDA device; the Triton ops' bodies
    # do not look at the device.
    from mmcal_kernels import PreFusionCalibration

    module = randomize_(PreFusionCalibration([96, 64, 40], layouts=["sequence", "spatial", "spatial"], shared_dim=16))
    xs, masks, _ = _inputs(mode, device="cpu")
    with mode:
        params = [GateParams(*[torch.empty_strided(t.shape, t.stride()) for t in p]) for p in module.gate_params()]
        present = torch.empty((xs[0].shape[0], 3), dtype=torch.bool)
        outputs, diagnostics = triton_backend.OPS.calibrate(xs, params, ["sequence", "spatial", "spatial"], masks, present)
    assert [y.shape for y in outputs] == [x.shape for x in xs]
    assert diagnostics["agreement"].shape[1:] == (3, 3) and _symbolic(diagnostics["agreement"].shape[0])


def test_mask_bytes_compiles_inside_a_triton_op_body():
    """Inductor traces a triton_op's body after Dynamo, where is_compiling()
    is False: ``slots.mask_bytes`` must not hand it a bool -> uint8 view,
    which Inductor in torch 2.11 cannot lower ("torch.bool is not supported
    by torch.iinfo"; seen on an H200 in the Triton module's compile test).
    On the CPU, with a body of torch ops only; it fails on torch 2.11 when
    ``mask_bytes`` checks is_compiling() alone (later torch lowers the view)."""
    from torch.library import triton_op

    from mmcal_kernels.backends.triton.slots import mask_bytes

    @triton_op("mmcal_test::mask_bytes_sum", mutates_args=())
    def mask_bytes_sum(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * mask_bytes(mask, x).to(x.dtype).sum()

    torch._dynamo.reset()
    mask, x = torch.tensor([[True, False, True], [True, True, False]]), torch.randn(3)
    # No compile caches: their key is the Dynamo graph, which holds the op
    # call and not its body, so a cached graph would hide a body that fails.
    no_caches = {"fx_graph_cache": False, "fx_graph_remote_cache": False}
    with torch._inductor.config.patch(no_caches), torch._functorch.config.patch(enable_autograd_cache=False):
        got = torch.compile(lambda m, v: torch.ops.mmcal_test.mask_bytes_sum(m, v), fullgraph=True)(mask, x)
    torch.testing.assert_close(got, x * 4)
    assert mask_bytes(mask, x).data_ptr() == mask.data_ptr()  # eager: the free view, no copy
