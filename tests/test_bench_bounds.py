"""The estimate of the least time beside the paired contenders
(mmcal_kernels/bench/bounds.py): what its two parts do, their arithmetic, and
a quick paired run with it."""

import json

import pytest
import torch

from mmcal_kernels import backends, reference
from mmcal_kernels.bench import bounds, paired
from mmcal_kernels.bench.contenders import input_sets
from mmcal_kernels.bench.timing import median_p20_p80
from mmcal_kernels.bench.workloads import Workload, workload

HAS_CPU = backends.get("cpu").usable


def _sets(name="mosi-unaligned", dtype=torch.float32, count=3):
    w = workload(name, dtype).scaled(batch=4, max_positions=16)
    return w, input_sets(w, dtype, "cpu", count=count)


@pytest.mark.parametrize("pass_name", bounds.PASSES)
def test_floor_read_reads_what_must_cross_from_memory_over_the_contenders_own_inputs(pass_name, monkeypatch):
    w, sets = _sets()  # MOSI: masked
    x, v = w.feature_bytes(torch.float32), w.mask_bytes()
    assert v > 0
    call = bounds.floor_read_call(sets, pass_name)
    assert call.plan == ["X", "V", "Y"] + (["dY", "X", "dX", "V"] if pass_name == "fwd+bwd" else [])
    size = {n: sum(t.numel() * t.element_size() for t in call.read(sets[0], n)) for n in set(call.plan)}
    assert size["V"] == v and all(abs(size[n] - x) < 4 for n in size if n != "V")
    expected = 2 * x + v if pass_name == "forward" else 5 * x + 2 * v  # tiles re-read from cache cost nothing
    assert abs(sum(size[n] for n in call.plan) - expected) < 4 * len(call.plan)
    # inputs are the contenders' own tensors, in their rotation; outputs are one buffer, reused
    for k, s in enumerate(sets):
        assert all(a is b for a, b in zip(call.read(s, "X"), s.features))
        assert all(a is b for a, b in zip(call.read(s, "dY"), s.grad_outputs))
    assert call.read(sets[0], "Y")[0] is call.read(sets[1], "Y")[0]
    summed = []
    monkeypatch.setattr(torch.Tensor, "sum", lambda t, *a, **k: summed.append(t) or torch.zeros(()))
    for k in range(len(sets)):  # each call reads the next set: every tensor of its plan, in order
        out = call()
        assert isinstance(out, list)  # read now, not a lazy generator the timer never drains
        s = sets[(k + 1) % len(sets)]
        assert [id(t) for t in summed] == [id(t) for n in call.plan for t in call.read(s, n)]
        summed.clear()


def test_floor_read_skips_the_masks_of_an_unmasked_workload():
    _, sets = _sets("cremad-resnet18")
    assert all(m is None for m in sets[0].masks)
    assert bounds.floor_read_call(sets, "fwd+bwd").plan == ["X", "Y", "dY", "X", "dX"]


@pytest.mark.skipif(not HAS_CPU, reason="no cpu backend")
@pytest.mark.parametrize("pass_name", bounds.PASSES)
def test_floor_kernels_move_the_same_bytes_with_the_backends_passes(pass_name):
    w, sets = _sets()
    call = bounds.floor_kernels_call(sets, w.layouts, pass_name)
    out = call()  # the second set: rotation as the contenders'
    s = sets[1]
    expected = [x * g.unsqueeze(1) for x, g in zip(s.features, s.gates)]  # "sequence" [B, P, D] times [B, D]
    if pass_name == "fwd+bwd":
        expected += [dy * g.unsqueeze(1) for dy, g in zip(s.grad_outputs, s.gates)]
        expected += [reference.summary(x, "sequence") for x in s.features]  # every position: dg reads padding too
    assert len(out) == len(expected)
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_products_are_one_samples_links_no_overlap_hides_for_the_narrowest_modality():
    w = Workload("odd", 3, (5, 2, 7), ("sequence",) * 3, (4, 4, 4), "test")
    d, r = 8, 6  # shared and hidden width differ: a swapped pair shows
    forward = [(1, 2, 8, True), (1, 18, 6, True), (1, 6, 2, True)]
    backward = [(1, 2, 6, False), (1, 6, 18, False), (1, 8, 2, False)]
    assert bounds.product_shapes(w, "forward", d, r) == forward
    assert bounds.product_shapes(w, "fwd+bwd", d, r) == forward + backward
    for pass_name, shapes in (("forward", forward), ("fwd+bwd", forward + backward)):
        call = bounds.products_call(w, torch.float64, "cpu", pass_name, d, r)
        assert len(call.work) == len(shapes)
        for (a, b, out), (rows, inner, cols, transposed) in zip(call.work, shapes):
            assert a.shape == (rows, inner) and b.shape == (inner, cols) and out.shape == (rows, cols)
            assert a.dtype == b.dtype == out.dtype == torch.float64
            assert b.is_contiguous() != transposed  # a forward layer reads W^T, a data gradient W
            out.zero_()
        call()
        for a, b, out in call.work:
            torch.testing.assert_close(out, a @ b)  # every product ran, into its output


def test_an_estimate_is_defined_for_the_modules_steps_only():
    w = workload("mosi-unaligned", torch.float32)
    _, sets = _sets()
    for make in (lambda: bounds.floor_read_call(sets, "summary"),
                 lambda: bounds.product_shapes(w, "fwd+bwd frozen"),
                 lambda: bounds.needed_ratios({}, "gates", "reference", "reference+compile")):  # fmt: skip
        with pytest.raises(ValueError, match="pass_name"):
            make()


def test_estimate_is_the_faster_floor_plus_the_products_in_each_round_and_a_contender_is_over_it():
    times = {"reference": [6.0, 8.0, 30.0], "cpu": [3.0, 4.0, 9.0], bounds.FLOOR: [1.0, 2.0, 2.0],
             bounds.PRODUCTS: [1.0, 0.0, 1.0]}  # fmt: skip
    out = bounds.bound_ratios(times)
    assert set(out) == {"reference", "cpu", bounds.BOUND}
    assert out[bounds.BOUND]["median"] == 2.0  # rounds: 2, 2, 3
    assert out["reference"]["median"] == 4.0  # rounds: 3, 4, 10 (not 8 / 2)
    assert out["cpu"]["median"] == 2.0 and out["cpu"]["p80"] > out["cpu"]["p20"]
    # with the kernels' floor: the faster of the two, round by round
    both = bounds.bound_ratios({**times, bounds.FLOOR_KERNELS: [3.0, 1.0, 0.5]})
    assert set(both) == {"reference", "cpu", bounds.BOUND}
    assert both[bounds.BOUND]["median"] == 1.5  # rounds: 1 + 1, 1 + 0, 0.5 + 1
    assert both["reference"]["median"] == 8.0  # rounds: 3, 8, 20
    with pytest.raises(ValueError, match="products"):
        bounds.bound_ratios({"cpu": [1.0], bounds.FLOOR: [1.0]})


def test_needed_is_the_tighter_target_over_the_estimate_and_its_verdict_reads_p20_and_p80():
    parts = {bounds.FLOOR: [1.0, 1.0, 1.0, 1.0, 1.0], bounds.PRODUCTS: [0.0] * 5}
    # forward+backward: the tighter of eager / 3 and compiled / 2, round by round
    times = {**parts, "e": [9.0, 3.0, 9.0, 9.0, 9.0], "c": [4.0, 4.0, 1.0, 4.0, 4.0]}
    needed = bounds.needed_ratios(times, "fwd+bwd", "e", "c")
    assert needed["median"] == 2.0  # rounds: 2, 1, 0.5, 2, 2
    forward = bounds.needed_ratios(times, "forward", "e", "c")
    assert forward["median"] == 2.0 and forward["p20"] == pytest.approx(1.7)  # compiled / 2 alone: 2, 2, 0.5, 2, 2
    verdicts = {}
    cases = (("low", [1.5] * 5), ("high", [2.4] * 5), ("mixed", [1.0, 1.2, 1.8, 2.2, 3.0]), ("at one", [2.0] * 5))
    for label, series in cases:
        verdicts[label] = bounds.needed_ratios({**parts, "e": [9.0] * 5, "c": series}, "forward", "e", "c")["verdict"]
    assert verdicts == {"low": "out of reach", "high": "not ruled out", "mixed": "undecided", "at one": "not ruled out"}


@pytest.mark.skipif(not HAS_CPU, reason="no cpu backend")
def test_bound_parts_read_the_features_in_their_dtype_and_compute_in_the_compute_dtype():
    args = paired.parse_args(["--bounds", "--dtype", "bf16-mixed"])  # bfloat16 features, float32 parameters
    w, sets = _sets(dtype=torch.bfloat16)
    parts = paired.bound_parts(args, w, torch.device("cpu"), "fwd+bwd", sets)
    assert list(parts) == [bounds.FLOOR, bounds.FLOOR_KERNELS, bounds.PRODUCTS]
    floor = parts[bounds.FLOOR]
    assert sum(t.numel() * t.element_size() for t in floor.read(sets[0], "X")) == w.feature_bytes(torch.bfloat16)
    assert all(t.dtype == torch.float32 for a, b, out in parts[bounds.PRODUCTS].work for t in (a, b, out))
    firsts = set()
    with pytest.MonkeyPatch.context() as mp:  # the floor rotates through all the contenders' sets
        mp.setattr(torch.Tensor, "sum", lambda t, *a, **k: firsts.add(id(t)) or torch.zeros(()))
        for _ in sets:
            floor()
    assert {id(s.features[0]) for s in sets} <= firsts
    assert paired.bound_parts(args, w, torch.device("cpu"), "fwd+bwd frozen", sets) == {}
    assert paired.bound_parts(paired.parse_args([]), w, torch.device("cpu"), "fwd+bwd", sets) == {}


@pytest.mark.skipif(not HAS_CPU, reason="no cpu backend")
def test_quick_paired_run_with_bounds_times_the_parts_in_the_same_rounds(tmp_path, capsys, monkeypatch):
    rounds_of = []
    real_time_rounds = paired.time_rounds

    def recording_time_rounds(calls, numbers, rounds, *a, **k):
        rounds_of.append(sorted(calls))
        return real_time_rounds(calls, numbers, rounds, *a, **k)

    monkeypatch.setattr(paired, "time_rounds", recording_time_rounds)
    argv = ["--quick", "--workloads", "mosi-unaligned", "--passes", "forward", "fwd+bwd", "fwd+bwd frozen",
            "--bounds", "--compile-inner", "eager", "--out", str(tmp_path)]  # fmt: skip
    assert paired.main(argv) == 0
    contenders = ["cpu", "reference", "reference+compile"]
    # the parts are timed in the very rounds of the contenders, not in rounds of their own
    parts = [bounds.FLOOR, bounds.FLOOR_KERNELS, bounds.PRODUCTS]
    assert rounds_of == [sorted(contenders + parts)] * 2 + [contenders]
    (path,) = tmp_path.glob("*-paired-quick.json")
    data = json.loads(path.read_text())
    assert data["meta"]["bounds"] is True
    records = data["records"]
    for p in ("forward", "fwd+bwd"):
        rows = {r["backend"]: r for r in records if r["pass"] == p}
        assert set(rows) == set(contenders) | set(parts)
        floor, kernels, products = (rows[p] for p in parts)
        assert floor["bound_part"] and products["bound_part"] and "ratio_vs_subject" not in floor
        per_round_bound = [min(f, k) + q for f, k, q in zip(floor["round_ms"], kernels["round_ms"], products["round_ms"])]
        assert floor["bound_ms"]["median"] == pytest.approx(sorted(per_round_bound)[1])
        for label in contenders:
            over = sorted(t / b for t, b in zip(rows[label]["round_ms"], per_round_bound))
            assert rows[label]["ratio_vs_bound"]["median"] == pytest.approx(over[1])
        eager, compiled = rows["reference"]["round_ms"], rows["reference+compile"]["round_ms"]
        target = [min(e / 3, c / 2) if p == "fwd+bwd" else c / 2 for e, c in zip(eager, compiled)]
        needed = sorted(t / b for t, b in zip(target, per_round_bound))
        assert floor["needed"]["median"] == pytest.approx(needed[1])
        _, p20, p80 = median_p20_p80(needed)
        verdict = "out of reach" if p80 < 1 else "not ruled out" if p20 >= 1 else "undecided"
        assert floor["needed"]["verdict"] == verdict
        # the parts are not contenders: the subject's ratios name none of them
        assert rows["reference"]["ratio_vs_subject"] is not None
    frozen = {r["backend"]: r for r in records if r["pass"] == "fwd+bwd frozen"}
    assert set(frozen) == set(contenders)  # no estimate defined there
    assert all(r["ratio_vs_bound"] is None for r in frozen.values())
    out = capsys.readouterr().out
    assert "estimate (faster floor + products)" in out and "(bound part)" in out and "the targets need" in out


@pytest.mark.skipif(not HAS_CPU, reason="no cpu backend")
def test_the_forwards_verdict_needs_the_compiled_reference_only(tmp_path, capsys):
    argv = ["--quick", "--workloads", "mosi-unaligned", "--passes", "forward", "fwd+bwd", "--bounds",
            "--contenders", "cpu", "reference+compile", "--compile-inner", "eager", "--out", str(tmp_path)]  # fmt: skip
    assert paired.main(argv) == 0
    (path,) = tmp_path.glob("*-paired-quick.json")
    floors = {r["pass"]: r for r in json.loads(path.read_text())["records"] if r["backend"] == bounds.FLOOR}
    assert floors["forward"]["needed"]["verdict"]  # compiled / 2
    assert floors["fwd+bwd"]["needed"] is None  # the eager reference's third is missing


def test_bounds_on_a_gpu_are_refused_before_anything_runs():
    with pytest.raises(SystemExit, match="--bounds: defined on the CPU only"):
        paired.main(["--quick", "--bounds", "--device", "cuda", "--workloads", "mosi-unaligned"])
