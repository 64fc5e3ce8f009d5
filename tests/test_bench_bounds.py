"""The bound beside the paired contenders (mmcal_kernels/bench/bounds.py):
what its two parts do, their arithmetic, and a quick paired run with it."""

import json

import pytest
import torch

from mmcal_kernels import backends
from mmcal_kernels.bench import bounds, paired
from mmcal_kernels.bench.contenders import make_module
from mmcal_kernels.bench.floors import floor_bytes
from mmcal_kernels.bench.workloads import workload


@pytest.mark.parametrize("pass_name", bounds.PASSES)
def test_floor_read_reads_the_floor_of_features_and_masks_once_a_call_from_buffers_past_the_cache(pass_name):
    w = workload("mosei-aligned", torch.float32).scaled(batch=4, max_positions=16)
    call = bounds.floor_read_call(w, torch.float32, "cpu", pass_name, cache_bytes=1 << 20)
    expected = floor_bytes(pass_name, w.feature_bytes(torch.float32), w.mask_bytes(), 0, 0)
    assert expected > 0
    for buffer in call.buffers:
        assert abs(buffer.numel() * buffer.element_size() - expected) < 4
    assert len(call.buffers) * expected >= 2 * (1 << 20)  # the rotation spans twice the given cache
    sums = {float(call()) for _ in call.buffers}  # each call reads the next buffer
    assert len(sums) == len(call.buffers)


def test_products_are_the_critical_path_of_the_gate_network_at_the_modules_shapes():
    w = workload("mosei-aligned", torch.float32)
    module = make_module(w, "cpu", "reference")
    weights = {tuple(p.shape) for name, p in module.named_parameters()
               if name.endswith("weight") and not name.startswith("gate_instance")}  # fmt: skip
    forward = bounds.product_shapes(w, "forward")
    both = bounds.product_shapes(w, "fwd+bwd")
    assert len(forward) == 3 * len(w.dims) and len(both) == 6 * len(w.dims)
    assert set(forward) < set(both)
    for rows, inner, cols, transposed in both:
        assert rows == w.batch
        # a forward layer reads W^T (W is [cols, inner]); a data gradient reads W ([inner, cols])
        assert ((cols, inner) if transposed else (inner, cols)) in weights
    # the weight gradients' products (inner dimension B) are not on the critical path
    assert all(inner != w.batch for _, inner, _, _ in both)
    call = bounds.products_call(w.scaled(batch=3), torch.float64, "cpu", "fwd+bwd")
    call()


def test_a_bound_is_defined_for_the_modules_steps_only():
    w = workload("mosi-unaligned", torch.float32)
    for make in (lambda: bounds.floor_read_call(w, torch.float32, "cpu", "summary"),
                 lambda: bounds.product_shapes(w, "fwd+bwd frozen")):  # fmt: skip
        with pytest.raises(ValueError, match="pass_name"):
            make()


def test_bound_is_the_sum_of_the_parts_in_each_round_and_a_contender_is_over_it_round_by_round():
    times = {"reference": [6.0, 8.0, 30.0], "cpu": [3.0, 4.0, 9.0], bounds.FLOOR: [1.0, 2.0, 2.0],
             bounds.PRODUCTS: [1.0, 0.0, 1.0]}  # fmt: skip
    out = bounds.bound_ratios(times)
    assert set(out) == {"reference", "cpu", bounds.BOUND}
    assert out[bounds.BOUND]["median"] == 2.0  # rounds: 2, 2, 3
    assert out["reference"]["median"] == 4.0  # rounds: 3, 4, 10 (not 8 / 2)
    assert out["cpu"]["median"] == 2.0 and out["cpu"]["p80"] > out["cpu"]["p20"]
    with pytest.raises(ValueError, match="products"):
        bounds.bound_ratios({"cpu": [1.0], bounds.FLOOR: [1.0]})


@pytest.mark.skipif(not any(b.name == "cpu" and b.usable for b in backends.available()), reason="no cpu backend")
def test_quick_paired_run_with_bounds_times_the_parts_in_the_same_rounds(tmp_path, capsys):
    argv = ["--quick", "--workloads", "mosi-unaligned", "--passes", "forward", "fwd+bwd", "fwd+bwd frozen",
            "--bounds", "--compile-inner", "eager", "--out", str(tmp_path)]  # fmt: skip
    assert paired.main(argv) == 0
    (path,) = tmp_path.glob("*-paired-quick.json")
    data = json.loads(path.read_text())
    assert data["meta"]["bounds"] is True
    records = data["records"]
    for p in ("forward", "fwd+bwd"):
        rows = {r["backend"]: r for r in records if r["pass"] == p}
        assert set(rows) == {"reference", "reference+compile", "cpu", bounds.FLOOR, bounds.PRODUCTS}
        floor, products = rows[bounds.FLOOR], rows[bounds.PRODUCTS]
        assert floor["bound_part"] and products["bound_part"] and "ratio_vs_subject" not in floor
        per_round_bound = [f + q for f, q in zip(floor["round_ms"], products["round_ms"])]
        assert floor["bound_ms"]["median"] == pytest.approx(sorted(per_round_bound)[1])
        for label in ("reference", "reference+compile", "cpu"):
            over = sorted(t / b for t, b in zip(rows[label]["round_ms"], per_round_bound))
            assert rows[label]["ratio_vs_bound"]["median"] == pytest.approx(over[1])
        # the parts are not contenders: the subject's ratios name none of them
        assert rows["reference"]["ratio_vs_subject"] is not None
    frozen = {r["backend"]: r for r in records if r["pass"] == "fwd+bwd frozen"}
    assert set(frozen) == {"reference", "reference+compile", "cpu"}  # no bound defined there
    assert all(r["ratio_vs_bound"] is None for r in frozen.values())
    out = capsys.readouterr().out
    assert "bound (floor read + products)" in out and "(bound part)" in out


def test_bounds_on_a_gpu_are_refused_before_anything_runs():
    with pytest.raises(SystemExit, match="--bounds: defined on the CPU only"):
        paired.main(["--quick", "--bounds", "--device", "cuda", "--workloads", "mosi-unaligned"])
