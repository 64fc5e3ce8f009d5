"""pytest-benchmark suite: the harness's passes as benchmarks, so that
``pytest benchmarks --benchmark-only`` and ``--benchmark-compare`` work as
pytest-benchmark users expect. CI runs it with ``--benchmark-disable`` (each
once, as a smoke test). torch.compile contenders cost ~20 s each to compile:
set MMCAL_BENCH_COMPILE=1 to include them. MMCAL_BENCH_WORKLOADS picks the
workloads (comma-separated; default: the two smallest real ones).
"""

import itertools
import os

import pytest
import torch
from torch.utils._pytree import tree_leaves

from mmcal_kernels.bench.compiled import CompileWatch, fresh
from mmcal_kernels.bench.contenders import contenders, input_sets, make_module, pass_callables
from mmcal_kernels.bench.timing import input_set_count
from mmcal_kernels.bench.floors import PASSES, floor_bytes
from mmcal_kernels.bench.workloads import workload

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONTENDERS = {c.label: c for c in contenders(DEVICE, compile_reference=os.environ.get("MMCAL_BENCH_COMPILE") == "1")}
WORKLOADS = os.environ.get("MMCAL_BENCH_WORKLOADS", "mosei-aligned,cremad-resnet18").split(",")
DTYPES = {"float32": torch.float32, "bf16-mixed": torch.bfloat16}


@pytest.fixture(scope="module")
def prepared():
    """(workload, input sets, module, pass callables, watch) of one contender.
    At most one compiled contender is cached at a time: ``fresh()`` resets
    dynamo for the next, which would leave an earlier one to recompile inside
    its timing (in another order: ``-k``, pytest-randomly)."""
    cache = {}

    def get(name, dname, label):
        key = (name, dname, label)
        if key not in cache:
            w = workload(name, DTYPES[dname])
            sets = input_sets(w, DTYPES[dname], DEVICE, count=input_set_count(torch.device(DEVICE), w.feature_bytes(DTYPES[dname])))
            c = CONTENDERS[label]
            module = make_module(w, DEVICE, c.backend)
            watch = None
            if c.compiled:  # its own compiled functions, never another contender's cache entries
                for old in [k for k in cache if CONTENDERS[k[2]].compiled]:
                    del cache[old]
                fresh()
                watch = CompileWatch(label, c.mode)
            cache[key] = (w, sets, module, pass_callables(w, c, module, watch), watch)
        return cache[key]

    return get


def _tensors(result):
    return [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]


def _check_against_the_reference(result, reference, what):
    """A smoke check, not the precision tests (those compare with a float64
    oracle in tests/): each tensor within 2% of the reference's largest
    value, which a pass wired to the wrong inputs, or returning garbage, fails."""
    got, want = _tensors(result), _tensors(reference)
    assert len(got) == len(want) and got, f"{what}: {len(got)} tensors against the reference's {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        scale = max(1.0, b.double().abs().max().item()) if b.numel() else 1.0
        torch.testing.assert_close(a.double(), b.double(), rtol=2e-2, atol=2e-2 * scale, msg=lambda m: f"{what}[{i}]: {m}")


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("label", list(CONTENDERS))
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("name", WORKLOADS)
def test_pass(benchmark, prepared, name, dname, label, pass_name):
    w, sets, module, calls, watch = prepared(name, dname, label)
    fn, cycle = calls[pass_name], itertools.cycle(sets)
    x_bytes = w.feature_bytes(DTYPES[dname])
    p_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    g_bytes = sum(g.numel() * g.element_size() for g in sets[0].gates)
    benchmark.extra_info.update(
        workload=name, dtype=dname, backend=label, feature_bytes=x_bytes,
        floor_bytes=floor_bytes(pass_name, x_bytes, w.mask_bytes(), p_bytes, g_bytes),
    )  # fmt: skip
    what = f"{name} {dname} {label} {pass_name}"
    if watch is not None:  # its first call compiles, outside the timing, as the runner's
        before = watch.snapshot()
        fn(sets[0])
        watch.check_compiled(before, what)
        before = watch.snapshot()
    timed = [0]

    def call():
        timed[0] += 1
        return fn(next(cycle))

    result = benchmark(call)
    if watch is not None:  # every timed call ran a compiled graph, none recompiled
        watch.check(before, timed[0], what)
    reference = prepared(name, dname, "reference")[3][pass_name]
    _check_against_the_reference(fn(sets[0]), reference(sets[0]), what)
    assert result is not None
