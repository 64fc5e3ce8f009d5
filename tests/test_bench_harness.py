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
from mmcal_kernels.bench.timing import minor_page_faults
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
    """End to end in a subprocess, the allocator re-run included (forced: --quick alone starts none).
    The compiled contenders go through dynamo (fullgraph, the watch) with its "eager" backend instead
    of Inductor, which would cost ~20 s a compile here; check.sh's dry run compiles with Inductor."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--workloads", "mosei-aligned",
           "--dtypes", "bf16-mixed", "--passes", "forward", "--allocator-rerun", "always",
           "--compile-inner", "eager", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x compile" in result.stdout and "reference+compile" in result.stdout
    assert "[1/" in result.stdout  # one line a finished row (stdout is a pipe here)
    (json_path,) = tmp_path.glob("*-quick-filtered.json")
    assert (tmp_path / json_path.name.replace(".json", ".png")).stat().st_size > 10_000
    data = json.loads(json_path.read_text())
    rows = {(r["backend"], r["pass"], r["allocator"]) for r in data["records"]}
    kernels = {b.name for b in backends.available()
               if b.usable and "cpu" in (b.auto_device_types or b.device_types) and b.name != "reference"}  # fmt: skip
    # kernel backends show up by themselves, eager and compiled
    labels = {"reference", "reference+compile"} | kernels | {f"{k}+compile" for k in kernels}
    expected = {(b, p, a) for b in labels for p in ("forward",) for a in ("glibc", "reuse")}
    assert rows == expected
    assert set(data["meta"]["copy_bandwidth_gbps"]) == {"glibc", "reuse"}
    meta = data["meta"]
    assert meta["complete"] and not meta["errors"] and meta["quick"] and meta["filters"]
    counts_faults = minor_page_faults() is not None
    for r in data["records"]:
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["floor_fraction"] > 0 and r["gbps"] > 0 and r["speedup_vs_eager"] > 0
        # every row says which build and machine measured it (the re-run's rows too: same package, checked)
        assert r["kernels"] == meta["kernels"] and r["device"] == meta["device"]
        assert (r["graphs_compiled"] or 0) >= 1 if r["backend"].endswith("+compile") else r["ops"] > 0
        if counts_faults:  # counted on every CPU row, the re-run's too
            assert r["faults_per_step"] >= 0
    assert {m["torch"] for m in [data["meta"]]} == {torch.__version__}


# ---- labels and files on CUDA, without a GPU ----------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from mmcal_kernels.bench import compiled, contenders as contenders_mod, counting, runner  # noqa: E402
from mmcal_kernels.bench.compiled import CompileFallback, CompileWatch  # noqa: E402

GPU = "NVIDIA H100 80GB HBM3"
CUDA = torch.device("cuda")


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch.cuda reports a GPU by name; a usable 'cuda' kernel backend is registered."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: GPU)
    fake = SimpleNamespace(name="cuda", usable=True, device_types=("cuda",), auto_device_types=None)
    real = backends.available()
    monkeypatch.setattr(backends, "available", lambda: [b for b in real if b.name != "cuda"] + [fake])


def test_cuda_labels_names_and_contenders(fake_gpu):
    assert runner.allocator_label(CUDA) == "cuda-caching"
    assert runner.device_name(CUDA) == GPU
    labels = [c.label for c in contenders_mod.contenders(CUDA)]
    assert labels[:3] == ["reference", "reference+compile", "reference+reduce-overhead"]
    assert {"cuda", "cuda+compile"} <= set(labels) and "cpu" not in labels
    graphs = [c for c in contenders_mod.contenders(CUDA) if c.label == "reference+reduce-overhead"][0]
    assert graphs.compiled and graphs.mode == "reduce-overhead" and graphs.backend == "reference"
    kernel_graphs = [c for c in contenders_mod.contenders(CUDA) if c.label == "cuda+reduce-overhead"][0]
    assert kernel_graphs.compiled and kernel_graphs.mode == "reduce-overhead" and kernel_graphs.backend == "cuda"
    cpu_labels = [c.label for c in contenders_mod.contenders(torch.device("cpu"))]
    assert not [label for label in cpu_labels if "reduce-overhead" in label] and "cuda" not in cpu_labels
    assert [c.label for c in contenders_mod.contenders(CUDA, compile_reference=False)] == ["reference", "cuda"]
    meta = runner.run_meta(runner.parse_args(["--passes", "forward"]), CUDA)
    assert meta["device"] == GPU and meta["device_type"] == "cuda" and meta["threads"] is None
    assert runner.output_stem(GPU, None, False, bool(meta["filters"])) == "nvidia-h100-80gb-hbm3-filtered"
    assert runner.output_stem(GPU, None, True, False) == "nvidia-h100-80gb-hbm3-quick"


def _fake_rows(alloc="cuda-caching", device=GPU):
    rows = []
    for backend, ms in (("reference", 4.0), ("reference+compile", 2.0), ("reference+reduce-overhead", 1.0), ("cuda", 0.5)):
        for pass_name in ("forward", "fwd+bwd"):
            rows.append(dict(workload="mosei-aligned", dtype="float32", backend=backend, allocator=alloc, device=device,
                             kernels="AVX2", median_ms=ms, p20_ms=ms * 0.9, p80_ms=ms * 1.1, first_call_s=0.1,
                             floor_fraction=0.5 / ms, ops=None, **{"pass": pass_name},
                             launches={"forward": {"kernels": 7}, "backward": {"kernels": 9}}))  # fmt: skip
    return rows


def test_main_on_cuda_labels_writes_filtered_files_and_starts_no_rerun(fake_gpu, monkeypatch, tmp_path, capsys):
    def measure(args, device, progress_for):
        meta = {"copy_bandwidth_gbps": {"cuda-caching": 3000.0}, "device": GPU, "kernels": "AVX2", "errors": [],
                "skipped_rows": 0}  # fmt: skip
        progress = progress_for(meta, 8)
        for r in _fake_rows():
            progress.add(r)
            assert json.loads(next(tmp_path.glob("*.json")).read_text())["records"][-1] == r  # written per row
        return progress.records, meta

    monkeypatch.setattr(runner, "measure", measure)
    monkeypatch.setattr(runner.subprocess, "run", lambda *a, **k: pytest.fail("no allocator re-run on CUDA"))
    assert runner.main(["--device", "cuda", "--passes", "forward", "fwd+bwd", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[1/8] mosei-aligned float32 reference forward (cuda-caching)" in out  # one line a row (not a tty)
    assert "launches forward 7/backward 9" in out
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["nvidia-h100-80gb-hbm3-filtered.json", "nvidia-h100-80gb-hbm3-filtered.png"]
    data = json.loads((tmp_path / files[0]).read_text())
    assert data["meta"]["complete"] and data["meta"]["device"] == GPU and data["meta"]["filters"]["passes"]
    graphs = [r for r in data["records"] if r["backend"] == "reference+reduce-overhead"][0]
    assert graphs["speedup_vs_compile"] == 2.0 and graphs["allocator"] == "cuda-caching"
    assert (tmp_path / files[1]).stat().st_size > 20_000


def test_png_title_says_quick_and_machine():
    t = report.title(GPU, "cuda", None, True, {"passes": ["forward"]}, "2.11.0+cu130", "AVX2")
    assert GPU in t and "QUICK" in t and "filtered" in t and "CUDA" in t
    t = report.title("AMD EPYC", "cpu", 2, False, {}, "2.13.0", "AVX512")
    assert "full run" in t and "2 threads" in t and "CPU kernels AVX512" in t and "QUICK" not in t


def test_passes_without_a_floor_get_no_floor_panel():
    rows = [{"pass": "forward", "floor_fraction": 0.5}, {"pass": "gates", "floor_fraction": None},
            {"pass": "gates fwd+bwd"}]  # fmt: skip
    assert report.plot_panels(rows, ["forward", "gates", "gates fwd+bwd"]) == [
        ("forward", "floor"), ("forward", "speed"), ("gates", "speed"), ("gates fwd+bwd", "speed")]


def test_filtered_runs_are_named_apart():
    assert runner.filters_used(runner.parse_args([])) == {}
    assert runner.filters_used(runner.parse_args(["--quick"])) == {}
    for flags in (["--workloads", "mosei-aligned"], ["--dtypes", "float32"], ["--passes", "forward"],
                  ["--backends", "cpu"], ["--no-compile"]):  # fmt: skip
        assert runner.filters_used(runner.parse_args(flags)), flags
    assert runner.output_stem("AMD EPYC", 2, False, False) == "amd-epyc-2t"
    assert runner.output_stem("AMD EPYC", 2, False, True) == "amd-epyc-2t-filtered"


# ---- the allocator re-run -----------------------------------------------------------------------


def test_quick_starts_no_allocator_rerun(monkeypatch):
    monkeypatch.setattr(runner.subprocess, "run", lambda *a, **k: pytest.fail("--quick started the re-run"))
    args = runner.parse_args(["--quick", "--workloads", "stress-256MiB"])
    assert runner.rerun_with_reusing_allocator(args, torch.device("cpu"), []) == ([], {})


def test_auto_rerun_takes_large_and_faulting_workloads():
    args = runner.parse_args(["--workloads", "mosei-aligned", "mosi-unaligned", "cremad-resnet18", "stress-256MiB"])
    row = lambda name, faults: dict(workload=name, faults_per_step=faults)  # noqa: E731
    records = [row("mosei-aligned", runner.RERUN_FAULTS_PER_STEP), row("mosi-unaligned", runner.RERUN_FAULTS_PER_STEP - 1),
               row("cremad-resnet18", None), row("mosi-unaligned", 3)]  # fmt: skip
    assert runner.workloads_to_rerun(args, records) == ["mosei-aligned", "stress-256MiB"]
    assert runner.workloads_to_rerun(args, []) == ["stress-256MiB"]  # over 32 MB, faults or not
    always = runner.parse_args(["--allocator-rerun", "always", "--workloads", "mosi-unaligned"])
    assert runner.workloads_to_rerun(always, []) == ["mosi-unaligned"]
    quick = runner.parse_args(["--quick", "--workloads", "mosei-aligned"])
    assert runner.workloads_to_rerun(quick, records) == []


def test_minor_page_faults_count_first_touches():
    import mmap

    before = minor_page_faults()
    if before is None:
        pytest.skip("this platform counts no page faults")
    pages = 2048
    region = mmap.mmap(-1, pages * mmap.PAGESIZE)  # fresh anonymous memory: each first write faults
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # where transparent huge pages are "always", one fault per 4 KiB still
        region.madvise(mmap.MADV_NOHUGEPAGE)
    for i in range(pages):
        region[i * mmap.PAGESIZE] = 1
    after = minor_page_faults()
    region.close()
    assert after - before >= pages * 9 // 10, (before, after)


def test_allocator_rerun_imports_this_package_and_refuses_another_build(monkeypatch):
    here = runner.package_info()
    seen = {}

    def fake_run(cmd, env, cwd, check):
        seen.update(cmd=cmd, env=env, cwd=cwd)
        path = cmd[cmd.index("--child-json") + 1]
        with open(path, "w") as f:
            json.dump({"meta": dict(here, kernels="SOMETHING ELSE"), "records": []}, f)

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    args = runner.parse_args(["--allocator-rerun", "always", "--workloads", "mosei-aligned"])
    with pytest.raises(RuntimeError, match="another build"):
        runner.rerun_with_reusing_allocator(args, torch.device("cpu"), ["--workloads", "mosei-aligned"])
    assert seen["env"]["PYTHONPATH"].split(os.pathsep)[0] == os.path.dirname(here["package"])
    assert seen["cwd"] != os.getcwd() and not os.path.exists(os.path.join(seen["cwd"], "mmcal_kernels"))
    assert seen["cmd"][seen["cmd"].index("--expect-package") + 1] == here["package"]
    assert seen["env"]["MALLOC_MMAP_THRESHOLD_"] == runner.REUSE_ENV["MALLOC_MMAP_THRESHOLD_"]


def test_package_info_names_the_kernel_table():
    info = runner.package_info()
    assert info["package"] == os.path.dirname(os.path.abspath(__import__("mmcal_kernels").__file__))
    if backends.get("cpu").usable:
        assert info["kernels"] == torch.ops.mmcal.cpu_capability() and info["extension"].endswith(".so")


# ---- compiled contenders that fall back must fail the run -------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self, brk=False):
        super().__init__()
        self.lin, self.brk = torch.nn.Linear(4, 4), brk

    def forward(self, x):
        y = self.lin(x)
        if self.brk:
            torch._dynamo.graph_break()
        return y.relu()


def _row(fn):
    args = runner.parse_args(["--quick"])
    contender = contenders_mod.Contender("tiny+compile", "reference", True)
    sets = [torch.randn(3, 4), torch.randn(3, 4)]
    return args, contender, {"forward": fn}, sets


def test_compiled_contender_runs_compiled_and_is_counted():
    compiled.fresh()
    watch = CompileWatch("tiny+compile", inner="eager")
    fn = watch.compile(_Tiny())
    args, c, calls, sets = _row(fn)
    row = runner._time_row(args, torch.device("cpu"), c, calls, "forward", sets, watch, "tiny")
    assert row["graphs_compiled"] == 1 and watch.calls >= row["samples"] and row["ops"] is None


def test_graph_break_fails_loudly():
    compiled.fresh()
    watch = CompileWatch("tiny+compile", inner="eager")
    args, c, calls, sets = _row(watch.compile(_Tiny(brk=True)))
    with pytest.raises(CompileFallback, match="tiny"):
        runner._time_row(args, torch.device("cpu"), c, calls, "forward", sets, watch, "tiny")


def test_recompiles_while_timing_fail_loudly():
    compiled.fresh()
    watch = CompileWatch("tiny+compile", inner="eager")
    state = {"n": 0}

    def step(x):  # a Python int the graph specialises on, new every call: a recompile per call
        state["n"] += 1
        return x * state["n"]

    args, c, calls, sets = _row(watch.compile(step))
    with pytest.raises(CompileFallback, match="recompil|recompile limit|RecompileLimit"):
        runner._time_row(args, torch.device("cpu"), c, calls, "forward", sets, watch, "tiny")


def test_eager_fallback_fails_loudly():
    compiled.fresh()
    watch = CompileWatch("tiny+compile", inner="eager")
    fn = watch.compile(_Tiny())
    fn(torch.randn(3, 4))
    before = watch.snapshot()
    with torch.compiler.set_stance("force_eager"):  # what dynamo does past its recompile limit
        fn(torch.randn(3, 4))
    with pytest.raises(CompileFallback, match="EAGERLY"):
        watch.check(before, 1, "tiny")


def test_reduce_overhead_without_cuda_graphs_fails_loudly():
    """Inductor skips CUDA graphs (here: CPU tensors, as for any graph with a CPU
    tensor in it) with only a log line; the row must not be labelled with them."""
    compiled.fresh()
    watch = CompileWatch("tiny+reduce-overhead", "reduce-overhead")
    fn = watch.compile(_Tiny())
    before = watch.snapshot()
    fn(torch.randn(3, 4))
    with pytest.raises(CompileFallback, match="skipped CUDA graphs"):
        watch.check_compiled(before, "tiny")


def test_shared_forward_past_the_recompile_limit_is_caught():
    """The old harness's bug: one compile per module of one class, all on the same forward."""
    compiled.fresh()
    x = torch.randn(3, 4)
    with pytest.raises(Exception) as info:
        with compiled.strict_recompiles():
            for _ in range(torch._dynamo.config.recompile_limit + 2):
                watch = CompileWatch("tiny+compile", inner="eager")  # a new backend: a new cache entry
                fn = watch.compile(_Tiny())
                before = watch.snapshot()
                fn(x)
                watch.check_compiled(before, "tiny")
    assert isinstance(info.value, CompileFallback) or "Recompile" in type(info.value).__name__
    compiled.fresh()


def test_keep_going_records_the_failure_and_exits_1(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runner, "copy_bandwidth", lambda device, quick=False: (1e10, None))
    monkeypatch.setattr(runner, "contenders", lambda device, compile_reference=True, only=None:
                        [contenders_mod.Contender("reference+compile", "reference", True)])  # fmt: skip

    def broken(w, c, module, watch):
        return {"gates": watch.compile(lambda s: (torch._dynamo.graph_break(), s.summaries[0] * 2)[1])}

    monkeypatch.setattr(runner, "pass_callables", broken)
    argv = ["--quick", "--workloads", "mosei-aligned", "--dtypes", "float32", "--passes", "gates", "--out", str(tmp_path)]
    with pytest.raises(CompileFallback):
        runner.main(argv)
    assert runner.main(argv + ["--keep-going"]) == 1
    assert "FAILED: 1 row(s) failed" in capsys.readouterr().err
    data = json.loads(next(tmp_path.glob("*-filtered.json")).read_text())
    assert data["records"][0]["error"].startswith("CompileFallback") and data["meta"]["errors"]


# ---- what a step dispatches ---------------------------------------------------------------------


def test_op_count_leaves_out_views_and_allocations():
    x = torch.randn(4, 5)

    def step():
        y = torch.empty_like(x)
        z = x.view(5, 4).t().reshape(4, 5)  # views (reshape of a contiguous-enough tensor)
        return torch.mul(x, 2, out=y).sum() + z.exp().sum()

    n, by_name = counting.count_ops(step)
    assert by_name == {"aten::mul": 1, "aten::sum": 2, "aten::exp": 1, "aten::add": 1} and n == 5


def test_launch_classification():
    DT = torch.autograd.DeviceType
    span = lambda us: SimpleNamespace(elapsed_us=lambda: us)  # noqa: E731
    ev = lambda name, dt=DT.CPU, us=0.0: SimpleNamespace(name=name, device_type=dt, time_range=span(us))  # noqa: E731
    events = [ev("_reduce_kernel", DT.CUDA, 3.5), ev("_map_kernel", DT.CUDA, 2.0), ev("Memcpy HtoD", DT.CUDA, 9.0),
              ev("_reduce_kernel", DT.CUDA, 1.5),
              ev("cudaLaunchKernel", us=4.0), ev("cuLaunchKernelEx"), ev("cudaGraphLaunch"), ev("aten::mul")]  # fmt: skip
    got = counting.classify_events(events)
    assert got["launch_calls"] == 2 and got["graph_launches"] == 1
    assert got["kernels"] == 3 and got["kernel_us"] == 7.0  # kernels only: no copy, no host call
    assert got["name_us"] == {"_reduce_kernel": 5.0, "_map_kernel": 2.0}  # each name's busy time


# ---- a bounded run keeps what it measured ------------------------------------------------------------


def test_time_budget_and_interruption_keep_the_rows(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runner, "copy_bandwidth", lambda device, quick=False: (1e10, None))
    argv = ["--quick", "--no-compile", "--workloads", "mosei-aligned", "--dtypes", "float32", "--passes", "gates",
            "modulate", "--out", str(tmp_path)]  # fmt: skip
    assert runner.main(argv + ["--time-budget", "0"]) == 0
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert data["records"] == [] and data["meta"]["skipped_rows"] >= 4 and not data["meta"]["complete"]
    assert "INCOMPLETE" in capsys.readouterr().out

    real, calls = runner.time_call, []

    def cut(*a, **k):  # SIGTERM (timeout) during the second row
        calls.append(1)
        if len(calls) == 2:
            raise runner.Interrupted("signal 15")
        return real(*a, **k)

    monkeypatch.setattr(runner, "time_call", cut)
    assert runner.main(argv) == 130
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(data["records"]) == 1 and data["meta"]["interrupted"] == "signal 15" and not data["meta"]["complete"]
    assert next(tmp_path.glob("*.png")).stat().st_size > 10_000


def test_an_interruption_wrapped_by_a_library_is_still_one(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "copy_bandwidth", lambda device, quick=False: (1e10, None))
    monkeypatch.setattr(runner, "_INTERRUPTED", [])

    def wrapped(*a, **k):  # what Inductor does with a SIGTERM that lands inside a compile
        runner._INTERRUPTED.append("signal 15")
        raise RuntimeError("InductorError: Interrupted: signal 15")

    monkeypatch.setattr(runner, "time_call", wrapped)
    argv = ["--quick", "--no-compile", "--workloads", "mosei-aligned", "--dtypes", "float32", "--passes", "gates",
            "--keep-going", "--out", str(tmp_path)]  # fmt: skip
    assert runner.main(argv) == 130
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert data["records"] == [] and not data["meta"]["errors"] and data["meta"]["interrupted"] == "signal 15"


def test_wall_timer_counts_host_and_sync_time(monkeypatch):
    """time_wall per call = (calls' time + one sync) / calls, per round: host
    time counts (do_bench's CUDA events can hide it). A fake clock that the
    call advances by 1 ms and the sync by 5 ms."""
    from mmcal_kernels.bench import timing

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def call():
        clock[0] += 1e-3

    def sync():
        clock[0] += 5e-3

    got = timing.time_wall(call, sync, calls=10, rounds=4, warmup=2)
    assert got.samples == 4
    assert abs(got.median_ms - 1.5) < 1e-9 and abs(got.p20_ms - 1.5) < 1e-9


def test_input_sets_outgrow_the_last_level_cache_on_a_cpu():
    """Rotated sets must not fit the cache together (four of MOSI's float32
    sets fit a 32 MiB L3, and its summary then ran 1.3x faster)."""
    from mmcal_kernels.bench.timing import input_set_count, last_level_cache_bytes

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    mib = 2**20
    assert last_level_cache_bytes() > 0
    assert input_set_count(cpu, int(2.5 * mib), cache_bytes=32 * mib) == 26  # 26 x 2.5 MiB >= 64 MiB
    assert input_set_count(cpu, 5 * mib, cache_bytes=32 * mib) * 5 * mib >= 64 * mib
    assert input_set_count(cpu, 256 * mib, cache_bytes=32 * mib) == 2
    assert input_set_count(cpu, 1000, cache_bytes=32 * mib) == 64
    assert input_set_count(cuda, 5 * mib) == 4 and input_set_count(cuda, 100 * mib) == 2  # the timer flushes L2
