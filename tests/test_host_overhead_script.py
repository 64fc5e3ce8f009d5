"""benchmarks/host_overhead.py, host_instructions.py, inference_paths.py, profile_step.py, passes_vs_torch.py,
overlap_probe.py and autograd_node_probe.py run and report every row (a few calls, not a timing)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_host_overhead_script_reports_the_step_and_each_op():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_overhead.py"), "--calls", "2",
                             "--repeats", "1"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = ("module forward, no_grad", "module calibrate_", "module forward+backward", "module forward+backward, grad()",
            "op gates_backward", "op input_grads", "bare node fwd+bwd, grad()", "step minus its six ops", "CPU: ")  # fmt: skip
    for row in rows:
        assert row in result.stdout, result.stdout
    assert "ops mmcal::*" in result.stdout, result.stdout


def test_host_overhead_script_times_the_triton_backends_own_ops():
    # Under the interpreter (CPU tensors); the times are the interpreter's,
    # what counts is that the Triton ops run, not the C++ ones.
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_overhead.py"), "--backend", "triton",
                             "--calls", "1", "--repeats", "1"], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend 'triton'" in result.stdout and "op gates_backward" in result.stdout, result.stdout
    assert "ops mmcal::triton_*" in result.stdout, result.stdout


def test_host_overhead_script_stubs_the_triton_launches_only_for_triton():
    script = os.path.join(ROOT, "benchmarks", "host_overhead.py")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, script, "--backend", "triton", "--stub-launches", "--calls", "1",
                             "--repeats", "1"], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launches stubbed" in result.stdout and "op gates_backward" in result.stdout, result.stdout
    taken = [line for line in result.stdout.splitlines() if "launches the stub took" in line]
    assert taken and int(taken[0].split()[-1]) > 0, result.stdout  # the stub ran, not Triton
    refused = subprocess.run([sys.executable, script, "--stub-launches"], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "only with --backend triton" in refused.stderr, refused.stderr[-2000:]


def test_host_instructions_workers_run_each_kind():
    # What callgrind runs; the counting itself takes minutes, so it is faked below.
    script = os.path.join(ROOT, "benchmarks", "host_instructions.py")
    for kind in ("forward+backward", "forward, no_grad"):
        result = subprocess.run([sys.executable, script, "--worker", kind, "--calls", "2"], capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]


FAKE_VALGRIND = """#!{python}
import subprocess, sys
command = [a for a in sys.argv[1:] if not a.startswith("--tool") and not a.startswith("--callgrind")]
calls = int(command[command.index("--calls") + 1])
done = subprocess.run(command)
extra = 1000 if "no_grad" in " ".join(command) else 0  # the forward's count differs from the step's
print(f"==1== Collected : {{7000000 + (3000 + extra) * calls}}", file=sys.stderr)
sys.exit(done.returncode)
"""


def test_host_instructions_reports_the_difference_over_the_calls(tmp_path):
    """A stand-in valgrind whose count is 7 M + 3000 (forward+backward) or 4000 (the no_grad forward)
    instructions a call: the script must report 0.003 and 0.004 M a call, the fixed part cancelled."""
    fake = tmp_path / "valgrind"
    fake.write_text(FAKE_VALGRIND.format(python=sys.executable))
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_instructions.py"), "--calls", "3"],
                            capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    counted = [line for line in result.stdout.splitlines() if "M instructions" in line]
    rows = {line.split("  ")[1].strip(): line.split()[-5] for line in counted}
    assert rows == {"forward+backward": "0.003", "forward, no_grad": "0.004"}, result.stdout


def test_host_instructions_names_valgrind_when_it_is_missing(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # sys.executable is a full path; valgrind is not found
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_instructions.py")],
                            capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert result.returncode != 0 and "needs valgrind on the PATH" in result.stderr, result.stderr[-2000:]


def test_inference_paths_script_times_both_paths():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "inference_paths.py"), "--rounds", "2",
                             "--calls", "2"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("forward, no_grad", "calibrate_", "MOSEI-aligned", "CPU: "):
        assert row in result.stdout, result.stdout


def test_profile_step_script_splits_the_step():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py"), "--steps", "2",
                             "--top", "3"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    times = {}
    for line in result.stdout.splitlines():
        name, _, value = line.strip().rpartition(" ")
        if value == "ms":
            name, _, value = name.strip().rpartition(" ")
            times[name.strip()] = float(value)
    assert "CPU: " in result.stdout, result.stdout
    for part in ("passes over X (4 ops)", "gate network (2 ops)", "of which BLAS products",
                 "of which the autograd engine's own"):
        assert times.get(part, 0) > 0, result.stdout  # the ops were seen by the profiler
    assert times["of which BLAS products"] < times["gate network (2 ops)"], result.stdout
    assert times.get("step (wall, no profiler, just before)", 0) > 0, result.stdout
    faults = result.stdout.split("page faults a step: ")[1].split()
    assert faults[1] == "profiled," and faults[3] == "not", result.stdout
    assert float(faults[0]) >= 0 and float(faults[2]) >= 0, result.stdout
    top = result.stdout.split("events with the most host time of their own:\n")[1].splitlines()
    assert len(top) == 3 and all(" us self, " in line for line in top), result.stdout
    own = [float(line.split(" us self, ")[0].split()[-1]) for line in top]
    assert own == sorted(own, reverse=True) and own[0] > 0, result.stdout


def test_passes_vs_torch_script_times_each_pass_on_both_sides():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "passes_vs_torch.py"), "--calls", "1",
                             "--rounds", "1", "--workloads", "mosi-unaligned", "cremad-resnet18"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CPU: " in result.stdout, result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("mosi-", "cremad-"))]
    assert [row[1] for row in rows] == ["summaries", "modulate", "gate_grads", "input_grads"] * 2, result.stdout
    for row in rows:
        kernel_us, torch_us, ratio = map(float, row[2:])
        assert kernel_us > 0 and torch_us > 0 and abs(ratio - torch_us / kernel_us) < 0.02 + 0.02 * ratio, row


def test_overlap_probe_reports_every_mode():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "overlap_probe.py"), "--seconds", "0.05",
                             "--mib", "4", "--rounds", "1"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = ("stream alone, 1 thread (GB/s)", "gates alone, 1 thread (us a call)",
            "stream beside gates, 1 thread each (GB/s)", "gates beside stream, 1 thread each (us a call)", "CPU: ")  # fmt: skip
    for row in rows:
        assert row in result.stdout, result.stdout
    # Every rate measured: a mode that never ran its loop would print 0 or fail.
    lines = [line for line in result.stdout.splitlines() if "median" in line]
    medians = [float(line.split("median")[1].split()[0]) for line in lines if "slowed" not in line]
    assert len(medians) == 6 and all(m > 0 for m in medians), result.stdout
    assert sum("slowed by the other side" in line for line in lines) == 2, result.stdout


def test_autograd_node_probe_times_both_nodes(tmp_path):
    """The probe builds its C++ node and times every contender. It first checks
    that each node's outputs hang from that node (a C++ op that recorded no
    graph exits with an error), so only real nodes are timed."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "autograd_node_probe.py"), "--rounds", "1",
                             "--calls", "3", "--build-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "median" in line]
    for side in ("C++ node", "Python node"):
        for k in (3, 27):
            for what in ("forward ", "forward+grad "):
                assert any(line.strip().startswith(f"{side}, {k} inputs, {what}") for line in lines), result.stdout
    assert any("module 'cpu', tiny sizes" in line for line in lines), result.stdout
    medians = [float(line.split("median")[1].split()[0]) for line in lines]
    assert len(medians) == 13 and all(m > 0 for m in medians), result.stdout
    assert sum("C++ / Python" in line for line in lines) == 4, result.stdout
