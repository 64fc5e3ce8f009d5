"""The ``"triton"`` backend's import guard (``mmcal_kernels.backends.triton``): it says
why the backend is unusable, and the package works without triton."""

import os
import subprocess
import sys
import types
from importlib.machinery import ModuleSpec

import pytest
import torch

from mmcal_kernels import backends
from mmcal_kernels.backends import triton as _triton


def test_reasons(monkeypatch):
    monkeypatch.setattr(_triton.importlib.util, "find_spec", lambda name: None)
    assert _triton._why_not() == "triton is not installed (pip install triton)"
    monkeypatch.undo()
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _triton._why_not().startswith("installed, but no GPU is visible; set TRITON_INTERPRET=1 to run it on CPU tensors")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="3.5.1", __spec__=ModuleSpec("triton", None)))
    assert _triton._why_not() == "triton 3.5.1 is outside the supported 3.6-3.9"
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="3.9.0+git1234", __spec__=ModuleSpec("triton", None)))
    assert _triton._why_not() == ""


def test_unusable_backend_is_listed_and_refused_by_name():
    triton = backends.get("triton")
    if triton.usable:
        pytest.skip("triton is usable here")
    assert triton.why_not
    with pytest.raises(RuntimeError, match="backend 'triton' is not usable here"):
        backends.resolve("triton", "cpu")


def test_package_imports_without_triton(tmp_path):
    # A stand-in `triton` that cannot be imported, first on the path.
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text("raise ImportError('no triton here')\n")
    code = ("import mmcal_kernels as m; b = m.backends.get('triton'); "
            "print(b.usable, m.backends.resolve('auto', 'cpu').name)")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "False"


@pytest.mark.parametrize("stub", ["raise ImportError('simulated: a broken triton')", "pass  # no __version__"])
def test_a_broken_triton_where_it_would_run_gives_one_warning(tmp_path, stub):
    """Where triton would be used (a GPU, or TRITON_INTERPRET=1 as here), a
    triton that fails to import, or has no version, leaves the package usable
    on its other backends with one warning; it once stopped `import mmcal_kernels`."""
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text(stub + "\n")
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import mmcal_kernels as m; b = m.backends.get('triton'); "
            "print(b.usable, m.backends.resolve('auto', 'cpu').name); print(b.why_not)")  # fmt: skip
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    usable, why = out.stdout.splitlines()[0].split()[0], out.stdout.splitlines()[1]
    assert usable == "False"
    assert why.startswith("loading the Triton kernels failed: importing triton raised"), why
    assert out.stderr.count("backend 'triton' is unavailable") == 1, out.stderr


def test_a_bad_tiles_setting_names_the_variable_in_the_one_warning():
    """MMCAL_TRITON_GATE_BLOCKS is read when the Triton kernels load: a value
    they cannot take leaves the backend unusable, saying which variable and
    what it takes, once; the other backends still load."""
    pytest.importorskip("triton")
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import mmcal_kernels as m; b = m.backends.get('triton'); "
            "print(b.usable, m.backends.resolve('auto', 'cpu').name); print(b.why_not)")  # fmt: skip
    env = dict(os.environ, TRITON_INTERPRET="1", MMCAL_TRITON_GATE_BLOCKS="3x16")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[0] == "False", out.stdout
    assert "MMCAL_TRITON_GATE_BLOCKS='3x16': expected SxK with S in (1, 2, 4, 8, 16, 32)" in out.stdout, out.stdout
    assert out.stderr.count("backend 'triton' is unavailable") == 1, out.stderr
