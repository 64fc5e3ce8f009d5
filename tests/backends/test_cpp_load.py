"""How the compiled extension loads: the one-warning fallback to the reference,
and (slow) the JIT build from csrc/."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = (
    "import warnings, mmcal_kernels as m, mmcal_kernels.backends.cpp.load as c;"
    "print('HOW', c.STATUS['how']); print('WHY', c.STATUS['why_not']);"
    "print('AUTO', m.backends.resolve('auto', 'cpu').name)"
)


def _run(env, code=REPORT, timeout=600):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, cwd=ROOT, env=full, timeout=timeout)


def test_without_extension_one_warning_and_the_reference():
    result = _run({"MMCAL_SKIP_PREBUILT": "1", "MMCAL_NO_JIT": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("RuntimeWarning: mmcal_kernels: the compiled kernels are unavailable") == 1, result.stderr
    assert "AUTO reference" in result.stdout and "MMCAL_NO_JIT=1" in result.stdout
    info = _run({"MMCAL_SKIP_PREBUILT": "1", "MMCAL_NO_JIT": "1"}, "import mmcal_kernels.info as i, sys; sys.exit(i.main([]))")
    assert info.returncode == 0 and "cpu        not built: prebuilt _C skipped" in info.stdout, info.stdout


def test_pure_python_chosen_on_purpose_is_silent():
    result = _run({"MMCAL_NO_EXTENSION": "1"})
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert "AUTO reference" in result.stdout and "WHY pure-Python mode chosen (MMCAL_NO_EXTENSION=1)" in result.stdout


@pytest.mark.slow
def test_jit_build_when_the_prebuilt_library_is_skipped(tmp_path):
    """Builds csrc/ with torch.utils.cpp_extension.load (a minute or two on 2 cores)."""
    env = {"MMCAL_SKIP_PREBUILT": "1", "MMCAL_CACHE": str(tmp_path)}
    result = _run(env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HOW JIT build" in result.stdout and "AUTO cpu" in result.stdout, result.stdout
    check = _run(env, "import mmcal_kernels.info as i, sys; sys.exit(i.main([]))")
    assert check.returncode == 0 and "PASS cpu" in check.stdout, check.stdout
    # The same recipe as setup.py (build_config): every kernel table this CPU can run...
    from mmcal_kernels import build_config

    built = {os.path.basename(p).split(".")[0] for p in glob.glob(str(tmp_path / "*" / "mmcal_cpu_*.so"))}
    assert built == {f"mmcal_cpu_{cap}" for cap in build_config.runnable_capability_flags()}, built
    # ...and the widest of them in use, as with the prebuilt library.
    table = _run(env, "import mmcal_kernels, torch; print('TABLE', torch.ops.mmcal.cpu_capability())")
    widest = "AVX512" if "avx512" in built_caps(built) else "AVX2" if "avx2" in built_caps(built) else "DEFAULT"
    assert f"TABLE {widest}" in table.stdout, table.stdout + table.stderr


def built_caps(names):
    return {n.removeprefix("mmcal_cpu_") for n in names}


def _segments_end(path):
    """Where an ELF64 file's last loadable segment ends (its program headers read with struct)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        end = 0
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, _, p_offset, _, _, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == 1:  # PT_LOAD
                end = max(end, p_offset + p_filesz)
    return end


@pytest.mark.parametrize("cut_to", [4096, "mid-segments"])
def test_a_truncated_kernel_table_is_passed_over(tmp_path, cut_to):
    """A per-instruction-set library cut short (an interrupted copy, a full
    disk) once killed the process at import with SIGBUS: dlopen maps segments
    past the file's end. It is now passed over for the next narrower table."""
    import shutil

    import torch

    in_use = torch.ops.mmcal.cpu_capability().lower()
    if in_use == "default":
        pytest.skip("this CPU runs only the portable table, which is inside _C")
    package = tmp_path / "mmcal_kernels"
    shutil.copytree(os.path.join(ROOT, "mmcal_kernels"), package, ignore=shutil.ignore_patterns("__pycache__"))
    (library,) = glob.glob(str(package / f"mmcal_cpu_{in_use}*.so"))
    size = os.path.getsize(library)
    os.truncate(library, cut_to if cut_to != "mid-segments" else _segments_end(library) // 2)
    assert os.path.getsize(library) < size
    narrower = {"avx512": "AVX2", "avx2": "DEFAULT"}[in_use]
    code = "import mmcal_kernels, torch; print('TABLE', torch.ops.mmcal.cpu_capability())"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), MMCAL_NO_JIT="1")
    env.pop("MMCAL_CPU_CAPABILITY", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert result.returncode == 0, f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert f"TABLE {narrower}" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="ELF shared objects")
def test_the_built_libraries_use_the_shared_cxx_runtime():
    """Each built library names libstdc++.so.6 as needed and carries no copy of
    the runtime: a copy beside torch's (a compiler with only libstdc++.a, the
    GPU machine's /opt/gcc) crashed in _C's error messages (docs/gpu.md, run 6)."""
    import shutil

    import mmcal_kernels

    readelf, nm = shutil.which("readelf"), shutil.which("nm")
    if readelf is None or nm is None:
        pytest.skip("no readelf/nm (binutils)")
    package = os.path.dirname(mmcal_kernels.__file__)
    libraries = glob.glob(os.path.join(package, "_C*.so")) + glob.glob(os.path.join(package, "mmcal_cpu_*.so"))
    if not libraries:
        pytest.skip("no prebuilt library (a pure-Python or JIT install)")
    for path in libraries:
        needed = subprocess.run([readelf, "-d", path], capture_output=True, text=True, check=True).stdout
        assert "[libstdc++.so.6]" in needed, f"{os.path.basename(path)} does not link libstdc++.so.6:\n{needed}"
        defined = subprocess.run([nm, "-DC", "--defined-only", path], capture_output=True, text=True, check=True).stdout
        copies = [line for line in defined.splitlines() if " std::__codecvt_utf8_base" in line or "std::ostream::_M_insert" in line]
        assert not copies, f"{os.path.basename(path)} carries its own libstdc++: {copies[:3]}"
