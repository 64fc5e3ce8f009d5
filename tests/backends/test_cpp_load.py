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
    # A build at import surprises: its line says why the prebuilt _C was passed over.
    assert "prebuilt _C skipped (MMCAL_SKIP_PREBUILT=1); building the C++ kernels" in result.stderr, result.stderr
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


def _prebuilt_libraries(*tools):
    """The package's prebuilt libraries and the paths of the binutils ``tools``; skips without either."""
    import shutil

    import mmcal_kernels

    found = tuple(shutil.which(tool) for tool in tools)
    if None in found:
        pytest.skip(f"no {'/'.join(tools)} (binutils)")
    package = os.path.dirname(mmcal_kernels.__file__)
    libraries = glob.glob(os.path.join(package, "_C*.so")) + glob.glob(os.path.join(package, "mmcal_cpu_*.so"))
    if not libraries:
        pytest.skip("no prebuilt library (a pure-Python or JIT install)")
    return libraries, found


@pytest.mark.skipif(sys.platform != "linux", reason="ELF shared objects")
def test_the_built_libraries_use_the_shared_cxx_runtime():
    """Each built library names libstdc++.so.6 as needed and carries no copy of
    the runtime: a copy beside torch's (a compiler with only libstdc++.a, the
    GPU machine's /opt/gcc) crashed in _C's error messages (docs/gpu.md, run 6)."""
    libraries, (readelf, nm) = _prebuilt_libraries("readelf", "nm")
    for path in libraries:
        needed = subprocess.run([readelf, "-d", path], capture_output=True, text=True, check=True).stdout
        assert "[libstdc++.so.6]" in needed, f"{os.path.basename(path)} does not link libstdc++.so.6:\n{needed}"
        defined = subprocess.run([nm, "-DC", "--defined-only", path], capture_output=True, text=True, check=True).stdout
        copies = [line for line in defined.splitlines() if " std::__codecvt_utf8_base" in line or "std::ostream::_M_insert" in line]
        assert not copies, f"{os.path.basename(path)} carries its own libstdc++: {copies[:3]}"


def test_a_prebuilt_library_older_than_the_checkouts_csrc_is_skipped(tmp_path, monkeypatch):
    """An editable install runs the _C of its last build: after csrc/ changes
    (an edit, a pull) that _C ran the old kernels without a word. The loader
    now compares the sources it was built from with the checkout's, and skips
    a stale one (then builds the current sources, or warns). Only the files
    that build compiled count: a .cu edit leaves a CPU-only _C current."""
    import importlib
    import shutil
    import types

    import torch

    from mmcal_kernels import build_config
    from mmcal_kernels.backends.cpp import load

    csrc = tmp_path / "csrc"
    shutil.copytree(os.path.join(ROOT, "csrc"), csrc)
    files = build_config.compiled_files(str(csrc), [build_config.Library("_C", build_config.MAIN_SOURCES, (), ())])
    info = types.SimpleNamespace(EXTENSION=True, TORCH_VERSION=torch.__version__, SOURCE_FILES=files,
                                 SOURCES_DIGEST=build_config.sources_digest(str(csrc), files))  # fmt: skip
    real_import = importlib.import_module
    fakes = {"mmcal_kernels._build_info": info, "mmcal_kernels._C": types.SimpleNamespace()}
    monkeypatch.setattr(load.importlib, "import_module", lambda name, *a: fakes.get(name) or real_import(name, *a))
    monkeypatch.setattr(load, "SOURCES", str(csrc))
    monkeypatch.delenv("MMCAL_SKIP_PREBUILT", raising=False)

    assert load._load_prebuilt() is None
    for edited in ("cuda/gate_network.cu", "cuda/device_common.cuh", "README.md"):  # not in a CPU-only build
        (csrc / edited).write_text((csrc / edited).read_text() + "\n// edited\n")
        assert load._load_prebuilt() is None, edited
    header = csrc / "common" / "checks.h"
    original = header.read_text()
    header.write_text(original + "\n// edited\n")
    assert "built from older sources than csrc/" in load._load_prebuilt()
    header.unlink()
    assert "built from older sources than csrc/" in load._load_prebuilt()
    header.write_text(original)
    assert load._load_prebuilt() is None
    (csrc / "cpu" / "ops_cpu.cpp").write_text("")
    assert "pip install --no-build-isolation -e ." in load._load_prebuilt()
    # An installed package (no csrc/ beside it), or a build from before the digest: nothing to compare.
    monkeypatch.setattr(load, "SOURCES", str(tmp_path / "absent"))
    assert load._load_prebuilt() is None
    monkeypatch.setattr(load, "SOURCES", str(csrc))
    fakes["mmcal_kernels._build_info"] = types.SimpleNamespace(EXTENSION=True, TORCH_VERSION=torch.__version__)
    assert load._load_prebuilt() is None


@pytest.mark.skipif(sys.platform != "linux", reason="ELF shared objects")
def test_a_release_build_carries_no_debug_info():
    """Python's CFLAGS hand every compile "-g": the three libraries carried
    19 MB of DWARF, 94% of their size, until the release flags added -g0."""
    libraries, (readelf,) = _prebuilt_libraries("readelf")
    for path in libraries:
        sections = subprocess.run([readelf, "-S", "-W", path], capture_output=True, text=True, check=True).stdout
        assert ".debug_info" not in sections, f"{os.path.basename(path)} carries DWARF: built with -g"
