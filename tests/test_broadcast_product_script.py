"""benchmarks/gpu/broadcast_product_ttgir.py: it compiles for sm_90 here (no
GPU) and names, for each shape asked, what the TTGIR made of the sum. Which
of the two it is belongs to the Triton version (the results file records
3.6 and 3.9), so only the report's form is checked."""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu", "broadcast_product_ttgir.py")


def test_a_line_per_shape_naming_a_dot_or_a_sum():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # a compile for a GPU target, not the interpreter
    result = subprocess.run([sys.executable, SCRIPT, "16x4x16", "4x16x16"], capture_output=True, text=True,
                            timeout=300, env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("triton ") and "sm_90, 8 warps" in lines[0], lines
    assert re.fullmatch(r"  \[16, 4\] x \[4, 16\]: a (dot \(tt\.dot\), input precision .+|sum \(tt\.reduce\))", lines[1]), lines
    assert re.fullmatch(r"  \[4, 16\] x \[16, 16\]: a (dot \(tt\.dot\), input precision .+|sum \(tt\.reduce\))", lines[2]), lines
    assert len(lines) == 3, lines
