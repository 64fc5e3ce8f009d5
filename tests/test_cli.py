"""What a user runs: the self-check CLI and the examples in python/."""

import dataclasses
import os
import subprocess
import sys

import pytest

from mmcal_kernels import backends, info, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_info_reports_reference_healthy():
    result = _run("-m", "mmcal_kernels.info")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reference  usable" in result.stdout
    assert "PASS reference  cpu     float32" in result.stdout and "PASS reference  cpu     float64" in result.stdout
    for word in ("torch", "triton", "CUDA"):
        assert word in result.stdout


def test_info_exits_nonzero_when_a_backend_fails(monkeypatch, capsys):
    # A backend whose gates are 0.1% off: the self-check must catch it.
    def off_by_a_little(*args):
        outputs, diagnostics = reference.calibrate(*args)
        return [y * 1.001 for y in outputs], diagnostics

    broken = dataclasses.replace(backends._REGISTRY["reference"], name="broken", calibrate=off_by_a_little)
    monkeypatch.setitem(backends._REGISTRY, "broken", broken)
    assert info.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL broken     cpu     float32  AssertionError: output[0]" in out and "PASS reference" in out


def test_info_checks_the_in_place_path_too(monkeypatch, capsys):
    # A backend right under autograd whose calibrate_ alone writes 0.1% off.
    def in_place_off_by_a_little(features, *args):
        outputs, diagnostics = reference.calibrate(features, *args)
        for x, y in zip(features, outputs):
            x.copy_(y * 1.001)
        return diagnostics

    broken = dataclasses.replace(backends._REGISTRY["reference"], name="broken", calibrate_=in_place_off_by_a_little)
    monkeypatch.setitem(backends._REGISTRY, "broken", broken)
    assert info.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL broken     cpu     float32  AssertionError: calibrate_ output[0]" in out, out


@pytest.mark.parametrize("script", ["mult_transformer.py", "resnet_two_stream.py"])
def test_examples_run(script):
    result = _run(os.path.join("python", script), "--steps", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "without calibration: loss" in result.stdout and "with calibration: loss" in result.stdout


def test_package_works_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import mmcal_kernels.info as i; sys.exit(i.main([]))"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "triton        not available (ModuleNotFoundError" in result.stdout


def test_readme_quick_start_runs():
    import re

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        quick_start = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]
    namespace = {}
    exec(compile(quick_start, "README.md", "exec"), namespace)
    assert [t.shape[1] for t in namespace["outputs"]] == [50, 500, 500]


def test_the_suite_and_its_children_import_this_checkout(tmp_path):
    """Children started elsewhere, or as scripts, import this tree (tests/conftest.py
    puts it first on PYTHONPATH), not an installed mmcal_kernels of another tree."""
    import mmcal_kernels

    assert os.path.dirname(os.path.abspath(mmcal_kernels.__file__)) == os.path.join(ROOT, "mmcal_kernels")
    script = tmp_path / "where.py"
    script.write_text("import mmcal_kernels; print(mmcal_kernels.__file__)")
    for cmd in ([sys.executable, str(script)], [sys.executable, "-c", script.read_text()]):
        child = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
        assert child.returncode == 0, child.stderr[-2000:]
        assert os.path.dirname(os.path.abspath(child.stdout.strip())) == os.path.join(ROOT, "mmcal_kernels")
