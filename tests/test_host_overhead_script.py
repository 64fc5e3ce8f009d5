"""benchmarks/host_overhead.py runs and reports every row (a few calls, not a timing)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_host_overhead_script_reports_the_step_and_each_op():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_overhead.py"), "--calls", "2",
                             "--repeats", "1"], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("module forward+backward", "op gates_backward", "op input_grads", "step minus its six ops", "CPU: "):
        assert row in result.stdout, result.stdout
