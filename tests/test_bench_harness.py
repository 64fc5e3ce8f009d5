"""The benchmark harness: byte floors, workloads, and a smoke run end to end."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mmcal_kernels import backends
from mmcal_kernels.bench import report
from mmcal_kernels.bench.floors import floor_bytes
from mmcal_kernels.bench.workloads import NAMES, STRESS_BYTES, make_inputs, workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_feature_and_floor_bytes():
    w = workload("mosei-aligned", torch.float32)
    x = 32 * 50 * (768 + 74 + 35) * 4
    assert w.feature_bytes(torch.float32) == x and w.feature_bytes(torch.bfloat16) == x // 2
    assert w.mask_bytes() == 3 * 32 * 50
    assert floor_bytes("summary", x, 10, 7, 3) == x + 10
    assert floor_bytes("modulate", x, 10, 7, 3) == 2 * x + 3
    assert floor_bytes("forward", x, 10, 7, 3) == 3 * x + 10 + 7
    assert floor_bytes("fwd+bwd", x, 10, 7, 3) == 7 * x + 20 + 21
    assert floor_bytes("fwd+bwd frozen", x, 10, 7, 3) == 5 * x + 10 + 21
    assert floor_bytes("gates", x, 10, 7, 3) is None
    cremad = workload("cremad-resnet18", torch.float32)
    assert cremad.feature_bytes(torch.float32) == 64 * 512 * (9 * 6 + 1 * 7 * 7) * 4 and cremad.mask_bytes() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stress_workload_holds_256_mib_in_every_dtype(dtype):
    assert workload("stress-256MiB", dtype).feature_bytes(dtype) >= STRESS_BYTES == 256 * 2**20


def test_inputs_are_random_with_valid_masks():
    for name in NAMES[:-1]:
        w = workload(name, torch.float32).scaled(batch=3, max_positions=8)
        features, masks, present = make_inputs(w, torch.float32, "cpu", seed=0)
        for x, m in zip(features, masks):
            assert x.std() > 0.5 and torch.count_nonzero(x) == x.numel()
            if m is not None:
                assert m.dtype == torch.bool and m[:, 0].all() and m.shape == x.shape[:2]
        assert present.all()


def test_speedups_compare_within_workload_dtype_pass_and_allocator():
    base = dict(workload="w", dtype="float32", allocator="glibc")
    records = [
        dict(base, backend="reference", **{"pass": "forward"}, median_ms=4.0),
        dict(base, backend="reference+compile", **{"pass": "forward"}, median_ms=2.0),
        dict(base, backend="cpu", **{"pass": "forward"}, median_ms=1.0),
        dict(base, backend="cpu", **{"pass": "summary"}, median_ms=1.0),
    ]
    report.add_speedups(records)
    assert records[2]["speedup_vs_eager"] == 4.0 and records[2]["speedup_vs_compile"] == 2.0
    assert records[3]["speedup_vs_eager"] is None


@pytest.mark.compile
def test_quick_run_writes_table_json_and_png(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--workloads", "mosei-aligned",
           "--dtypes", "bf16-mixed", "--passes", "forward", "summary", "--allocator-rerun", "always", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x compile" in result.stdout and "reference+compile" in result.stdout
    (json_path,) = tmp_path.glob("*-quick.json")
    assert (tmp_path / json_path.name.replace(".json", ".png")).stat().st_size > 10_000
    data = json.loads(json_path.read_text())
    rows = {(r["backend"], r["pass"], r["allocator"]) for r in data["records"]}
    kernels = {b.name for b in backends.available()
               if b.usable and "cpu" in (b.auto_device_types or b.device_types) and b.name != "reference"}  # fmt: skip
    # kernel backends show up by themselves, eager and compiled
    labels = {"reference", "reference+compile"} | kernels | {f"{k}+compile" for k in kernels}
    expected = {(b, p, a) for b in labels for p in ("forward", "summary") for a in ("glibc", "reuse")}
    assert rows == expected
    assert set(data["meta"]["copy_bandwidth_gbps"]) == {"glibc", "reuse"}
    for r in data["records"]:
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["floor_fraction"] > 0 and r["gbps"] > 0 and r["speedup_vs_eager"] > 0
    assert {m["torch"] for m in [data["meta"]]} == {torch.__version__}
