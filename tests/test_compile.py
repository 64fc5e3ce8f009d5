"""torch.compile and torch.export of the module. Each compile costs about 20 s
on 2 cores, so there are few, each checking several things."""

import subprocess
import sys

import pytest
import torch

from conftest import assert_compiled_matches_eager, make_module
from mmcal_kernels import backends
from mmcal_kernels.compare import random_case, reference_copy

pytestmark = pytest.mark.compile

DIMS, LAYOUTS = [6, 4, 3], ["sequence", "sequence", "spatial"]


def _case(length, seed):
    return random_case(DIMS, LAYOUTS, batch=3, positions=[length, length + 3, (2, 3)], dtype=torch.float32, seed=seed)


BACKENDS = ["reference"] + (["cpu"] if backends.get("cpu").usable else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_equals_eager_forward_and_backward(backend):
    torch._dynamo.reset()
    module = make_module(DIMS, LAYOUTS, seed=41, dtype=torch.float32, backend=backend)
    features, masks, present = _case(7, 42)
    explanation = torch._dynamo.explain(module)(features, masks, present, True)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1

    got, want = assert_compiled_matches_eager(module, features, masks, present)
    torch.testing.assert_close(got[1]["agreement"], want[1]["agreement"], rtol=1e-5, atol=1e-6)


def test_compile_dynamic_does_not_recompile_per_length():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    module = make_module(DIMS, LAYOUTS, seed=43, dtype=torch.float32)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(module, backend=counter, dynamic=True, fullgraph=True)
    counts = []
    for length, seed in ((5, 1), (9, 2), (13, 3)):
        features, masks, present = _case(length, seed)
        with torch.no_grad():
            got = compiled(features, masks, present)
            want = module(features, masks, present)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        counts.append(counter.frame_count)
    # Dynamo may restart its first analysis once (counted as a frame); what
    # matters is that no new length compiles again.
    assert counts[0] >= 1 and counts[1:] == [counts[0]] * 2, f"compile counts after each length: {counts}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_calls_with_fresh_tensors_compile_once(backend):
    """Each training step brings new feature tensors of the same shapes: one
    compile serves them all. The fused node's slot dedupe once keyed on id()
    of each tensor; Dynamo guarded those ids, recompiled every call, and hit
    its recompile limit (the benchmark's cpu+compile rows failed on it)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    module = make_module(DIMS, LAYOUTS, seed=44, dtype=torch.float32, backend=backend)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    counts = []
    for seed in (1, 2, 3):
        features, masks, present = _case(7, seed)
        features = [x.detach().requires_grad_() for x in features]
        outputs, _ = compiled(features, masks, present, True)
        torch.autograd.grad([y.sum() for y in outputs], features)
        counts.append(counter.frame_count)
    assert counts[0] >= 1 and counts[1:] == [counts[0]] * 2, f"compile counts after each call: {counts}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_runs_and_matches_eager(backend):
    module = make_module(DIMS, LAYOUTS, seed=44, dtype=torch.float32, backend=backend)
    features, masks, present = _case(6, 45)
    exported = torch.export.export(module, (features, masks, present))
    got = exported.module()(features, masks, present)
    want = module(features, masks, present)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    other = _case(6, 46)  # same shapes, new values: the graph is not a constant
    for a, b in zip(exported.module()(*other), module(*other)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_quick_start_module_default_backend():
    """The README's Quick start as a user compiles it: the default constructor
    (backend="auto"), fullgraph=True, and dynamic=True, with zero graph breaks."""
    from mmcal_kernels import PreFusionCalibration
    from mmcal_kernels.compare import randomize_

    torch._dynamo.reset()
    module = randomize_(PreFusionCalibration(DIMS, shared_dim=8, layouts=LAYOUTS), seed=47)
    assert module.backend == "auto"
    features, masks, present = _case(7, 48)
    explanation = torch._dynamo.explain(module)(features, masks, present)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    for dynamic in (False, True):
        compiled = torch.compile(module, fullgraph=True, dynamic=dynamic)
        for length, seed in ((7, 48), (10, 49)):
            features, masks, present = _case(length, seed)
            with torch.no_grad():
                for a, b in zip(compiled(features, masks, present), module(features, masks, present)):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_input_under_compile_names_the_argument():
    """Without fullgraph, dynamo hands the raise back to eager: the package's
    own ValueError reaches the user. Under fullgraph=True torch wraps every
    exception raised while tracing as torch._dynamo.exc.Unsupported ("Observed
    exception"); the package's message is then in its text (README)."""
    torch._dynamo.reset()
    module = make_module(DIMS, LAYOUTS, seed=50, dtype=torch.float32, backend="auto")
    features, masks, present = _case(5, 51)
    bad = [features[0][..., :5], *features[1:]]  # 5 channels where the module expects 6
    message = r"features\[0\]: expected 6 channels"
    with pytest.raises(ValueError, match=message):
        torch.compile(module)(bad, masks, present)
    torch._dynamo.reset()  # else the frame dynamo just gave up on runs eagerly again
    with pytest.raises(torch._dynamo.exc.Unsupported, match=message):
        torch.compile(module, fullgraph=True)(bad, masks, present)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_tensor_in_several_slots_trains_under_fullgraph(backend):
    """One mask shared by aligned modalities, tied gate layers and one feature
    given twice: common, and once refused by Dynamo under fullgraph=True
    ("autograd.Function.apply: duplicate tensor input"; graph breaks without
    it). Compiled, every gradient equals the eager reference's, a tensor used
    twice getting the sum of both uses."""
    torch._dynamo.reset()
    dims, layouts = [4, 4, 3], ["sequence", "sequence", "spatial"]
    module = make_module(dims, layouts, seed=52, dtype=torch.float32, backend=backend)
    module.gate_hidden[1] = module.gate_hidden[0]  # one Linear in two modalities' slots
    reference = reference_copy(module)  # keeps the tie
    features, masks, present = random_case(dims, layouts, batch=3, positions=[6, 6, (2, 3)], dtype=torch.float32, seed=53)
    shared_mask = torch.rand(3, 6, generator=torch.Generator().manual_seed(54)) > 0.3
    x = features[0].detach().requires_grad_()
    grads = [torch.randn(y.shape, generator=torch.Generator().manual_seed(55 + i)) for i, y in enumerate(features)]

    def run(fn, mod):
        mod.zero_grad(set_to_none=True)
        x.grad = None
        outputs = fn([x, x, features[2]], masks=[shared_mask, shared_mask, None], present=present)
        torch.autograd.backward(outputs, grads)
        return [*outputs, x.grad, *[p.grad for p in mod.parameters()]]

    got = run(torch.compile(module, fullgraph=True), module)
    want = run(reference, reference)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"entry {i}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strict", [False, True])
def test_exported_program_trains_like_eager(backend, strict):
    """The exported program's gradients, features and every parameter, equal
    eager ones. Strict export traces an autograd.Function's forward with grad
    off, and once gave the kernel backends' program no gradient at all."""
    from conftest import random_grads

    module = make_module(DIMS, LAYOUTS, seed=56, dtype=torch.float32, backend=backend)
    features, masks, present = _case(6, 57)
    program = torch.export.export(module, (features, masks, present), strict=strict).module()
    grads = random_grads(features)

    def run(mod):
        xs = [x.detach().requires_grad_() for x in features]
        outputs = mod(xs, masks, present)
        torch.autograd.backward(outputs, grads)
        params = dict(mod.named_parameters())
        return [*outputs, *[x.grad for x in xs]], {name: params[name].grad for name in sorted(params)}

    (got, got_params), (want, want_params) = run(program), run(module)
    assert sorted(got_params) == sorted(want_params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for name, grad in want_params.items():
        assert got_params[name] is not None, f"{name}: no gradient through the exported program"
        torch.testing.assert_close(got_params[name], grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is not built")
def test_aot_inductor_package_runs_the_cpu_ops(tmp_path):
    """Ahead-of-time deployment: the exported module compiled by AOTInductor
    keeps the package's custom ops as calls into the extension (a process that
    has not imported mmcal_kernels cannot load it) and gives eager's result on
    new values. Lists of optional tensors and Tensor[] outputs are where
    AOTInductor's fallback for custom ops has been weakest, so this is
    checked, not assumed."""
    module = make_module(DIMS, LAYOUTS, seed=58, dtype=torch.float32, backend="cpu").eval()
    features, masks, present = _case(6, 59)
    program = torch.export.export(module, (features, masks, present))
    ops = {  # autocast regions hold their calls in submodules
        str(node.target)
        for sub in program.graph_module.modules()
        if isinstance(sub, torch.fx.GraphModule)
        for node in sub.graph.nodes
        if node.op == "call_function"
    }
    assert {"mmcal.summaries.default", "mmcal.gates.default", "mmcal.modulate.default"} <= ops, sorted(ops)

    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "calibration.pt2"))
    bare = subprocess.run([sys.executable, "-c", f"import torch; torch._inductor.aoti_load_package({path!r})"],
                          capture_output=True, text=True)  # fmt: skip
    assert bare.returncode != 0 and "mmcal::" in bare.stderr, bare.stderr[-2000:]

    runner = torch._inductor.aoti_load_package(path)
    for seed in (59, 60):  # the second: new values, same shapes
        features, masks, present = _case(6, seed)
        got = runner(features, masks, present)
        with torch.no_grad():
            want = module(features, masks, present)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
