"""The SIGSEGV tracer that the GPU-only raw-op test preloads into its child
(native_frames.py): proven here on a child that faults inside ctypes."""

import shutil
import subprocess
import sys

import pytest

from native_frames import name_frames, preload_env


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")) or not shutil.which("nm"), reason="needs cc and nm")
def test_a_faulting_child_names_its_native_frames(tmp_path):
    env = preload_env(str(tmp_path))
    assert "LD_PRELOAD" in env
    child = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], capture_output=True,
                           text=True, env=env, timeout=60)  # fmt: skip
    assert child.returncode != 0
    assert "segv_trace: native frames" in child.stderr
    named = name_frames(child.stderr, only="_ctypes")
    assert "_ctypes" in named and "+0x" in named, child.stderr
