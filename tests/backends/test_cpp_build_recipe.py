"""One build recipe: setup.py and the JIT build (mmcal_kernels.backends.cpp.load._jit_build)
hand torch the same libraries, sources and flags, for a CPU-only torch and for
a CUDA torch with a toolkit (torch's CUDA mocked; nothing is compiled)."""

import os
import runpy

import pytest
import torch
import torch.utils.cpp_extension as cpp_extension

from mmcal_kernels import build_config
from mmcal_kernels.backends.cpp import load as _cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
TOOLKIT = "/usr/local/cuda-13.0"


def _rel(path):
    """A source path as csrc/-relative, whether setup.py's (relative to the root) or the JIT's (absolute)."""
    return os.path.relpath(os.path.join(ROOT, path), CSRC)


def _setup_py_libraries(monkeypatch):
    """What setup.py's extension_modules passes to CppExtension / CUDAExtension, by library."""
    seen = {}

    def recorder(kind):
        def make(name, sources, extra_compile_args, extra_link_args):
            seen[name.removeprefix("mmcal_kernels.")] = dict(
                kind=kind, sources=[_rel(s) for s in sources], cxx=extra_compile_args["cxx"],
                nvcc=extra_compile_args.get("nvcc", []), link=extra_link_args,
            )  # fmt: skip
            return name

        return make

    monkeypatch.setattr(cpp_extension, "CppExtension", recorder("cpp"))
    monkeypatch.setattr(cpp_extension, "CUDAExtension", recorder("cuda"))
    setup_py = runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="setup_under_test")
    modules, _, build_info = setup_py["extension_modules"](["setup.py", "build_ext"])
    assert len(modules) == len(seen) and build_info["EXTENSION"] is True
    assert "CUDA" not in build_info  # nothing reads it
    return seen, build_info


def _jit_libraries(monkeypatch, tmp_path):
    """What _jit_build passes to torch.utils.cpp_extension.load, by library."""
    seen = {}

    def load(name, sources, extra_cflags, extra_cuda_cflags, extra_ldflags, with_cuda, **kwargs):
        module = "_C" if name == "mmcal_C" else name
        seen[module] = dict(kind="cuda" if with_cuda else "cpp", sources=[_rel(s) for s in sources], cxx=extra_cflags,
                            nvcc=extra_cuda_cflags, link=extra_ldflags)  # fmt: skip

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setenv("MMCAL_CACHE", str(tmp_path))
    monkeypatch.delenv("MMCAL_NO_JIT", raising=False)
    assert _cpp._jit_build() is None
    return seen


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("MMCAL_") or name == "TORCH_CUDA_ARCH_LIST":
            monkeypatch.delenv(name)


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu-only-torch", "cuda-torch-with-toolkit"])
def test_setup_py_and_jit_build_the_same(cuda, clean_env, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", "13.0" if cuda else None)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", TOOLKIT if cuda else None)
    monkeypatch.setenv("MMCAL_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    setup_libs, build_info = _setup_py_libraries(monkeypatch)
    jit_libs = _jit_libraries(monkeypatch, tmp_path)

    # The CPU kernel tables: setup.py every one the compiler targets, the JIT
    # build those this CPU runs; each built alike.
    tables = {f"mmcal_cpu_{cap}" for cap in build_config.capability_flags()}
    runnable = {f"mmcal_cpu_{cap}" for cap in build_config.runnable_capability_flags()}
    assert set(setup_libs) == tables | {"_C"}
    assert set(jit_libs) == runnable | {"_C"}
    for name in jit_libs:
        assert jit_libs[name] == setup_libs[name], name

    main = setup_libs["_C"]
    cu = [s for s in main["sources"] if s.endswith(".cu")]
    if cuda:
        assert main["kind"] == "cuda" and "cuda/ops_cuda.cpp" in main["sources"]
        assert sorted(cu) == ["cuda/elementwise.cu", "cuda/gate_network.cu", "cuda/reductions.cu"]
        assert main["nvcc"] == build_config.NVCC_FLAGS + [
            "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
            "-gencode=arch=compute_90,code=compute_90",
        ]  # fmt: skip
    else:
        assert main["kind"] == "cpp" and not cu and not main["nvcc"]
        assert not any(s.startswith("cuda/") for s in main["sources"])
    # Nothing the C++ sources do not read.
    assert not any("MMCAL_WITH_CUDA" in f for lib in setup_libs.values() for f in lib["cxx"])

    # What the loader checks a checkout's csrc/ against: every file compiled, the
    # headers, the CUDA ones only where CUDA is built (a .cu edit leaves a CPU _C current).
    files = build_info["SOURCE_FILES"]
    assert {s for lib in setup_libs.values() for s in lib["sources"]} < set(files)
    assert "common/checks.h" in files and ("cuda/device_common.cuh" in files) == cuda
    assert build_info["SOURCES_DIGEST"] == build_config.sources_digest(CSRC, files)
    # A release build overrides Python's own CFLAGS' "-g" (setuptools passes them first).
    assert all("-g0" in lib["cxx"] and "-g" not in lib["cxx"] for lib in setup_libs.values())


@pytest.mark.parametrize("switch", ["debug", "asan", "sanitize"])
def test_debug_and_sanitizer_builds_keep_their_debug_info(switch):
    cxx, _ = build_config.compile_flags(False, **{switch: True})
    assert "-g" in cxx and "-g0" not in cxx


def test_the_sources_digest_sees_content_names_and_missing_files(tmp_path):
    (tmp_path / "a.h").write_text("int a;\n")
    (tmp_path / "b.cpp").write_text("int b;\n")
    files = ("a.h", "b.cpp")
    first = build_config.sources_digest(str(tmp_path), files)
    assert build_config.sources_digest(str(tmp_path), files) == first
    (tmp_path / "README.md").write_text("not compiled")
    assert build_config.sources_digest(str(tmp_path), files) == first
    (tmp_path / "a.h").write_text("int a; \n")
    assert build_config.sources_digest(str(tmp_path), files) != first
    (tmp_path / "a.h").write_text("int a;\n")
    (tmp_path / "b.cpp").rename(tmp_path / "c.cpp")
    assert build_config.sources_digest(str(tmp_path), files) != first
    missing = build_config.sources_digest(str(tmp_path), files)
    (tmp_path / "b.cpp").write_text("")
    assert build_config.sources_digest(str(tmp_path), files) != missing  # empty is not missing


def test_every_source_of_the_plan_exists(clean_env, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", TOOLKIT)
    for lib in build_config.build_plan(tables="all"):
        for source in lib.sources:
            assert os.path.isfile(os.path.join(CSRC, source)), source


def test_cuda_switches(clean_env, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)  # no toolkit
    with pytest.warns(UserWarning, match=r"building without the CUDA kernels: no CUDA toolkit found"):
        assert not build_config.build_plan()[-1].nvcc
    with pytest.raises(build_config.BuildError, match="MMCAL_CUDA=1"):
        build_config.build_plan(environ={"MMCAL_CUDA": "1"})
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", TOOLKIT)
    assert build_config.build_plan()[-1].nvcc
    assert not build_config.build_plan(environ={"MMCAL_CUDA": "0"})[-1].nvcc
    # The default arch list, and TORCH_CUDA_ARCH_LIST when MMCAL_CUDA_ARCH_LIST is unset.
    assert build_config.build_plan()[-1].nvcc[-2:] == tuple(build_config.cuda_arch_flags(build_config.DEFAULT_CUDA_ARCHS))
    plan = build_config.build_plan(environ={"TORCH_CUDA_ARCH_LIST": "8.6"})
    assert plan[-1].nvcc[-1] == "-gencode=arch=compute_86,code=sm_86"
    with pytest.raises(build_config.BuildError, match="cannot read 'Hopper-ish'"):
        build_config.cuda_arch_flags("9.0;Hopper-ish")


def test_cuda_switch_spellings_and_a_toolkit_without_headers(clean_env, monkeypatch, tmp_path):
    """MMCAL_CUDA takes the spellings env_flag documents (off once built CUDA);
    another value stops the build naming it. A CUDA_HOME without
    include/cuda_runtime.h (torch guesses it from the nvcc on PATH, here a
    wrapper) gives a CPU-only plan and says why, where the build once failed
    after minutes with "cuda_runtime.h: No such file"; MMCAL_CUDA=1 refuses it.
    Arches older than 7.5 are refused before nvcc."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", TOOLKIT)
    for off in ("0", "off", "False", "no"):
        assert not build_config.build_plan(environ={"MMCAL_CUDA": off})[-1].nvcc, off
    for on in ("1", "on", "TRUE", "yes"):
        assert build_config.build_plan(environ={"MMCAL_CUDA": on})[-1].nvcc, on
    with pytest.raises(build_config.BuildError, match=r"MMCAL_CUDA='maybe': expected one of 1, true"):
        build_config.build_plan(environ={"MMCAL_CUDA": "maybe"})

    (tmp_path / "bin").mkdir()  # a directory with no toolkit headers
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path))
    with pytest.warns(UserWarning, match=r"building without the CUDA kernels: CUDA_HOME=.* holds no include/cuda_runtime.h"):
        assert not build_config.build_plan()[-1].nvcc
    with pytest.raises(build_config.BuildError, match=r"MMCAL_CUDA=1: CUDA_HOME=.* holds no include/cuda_runtime.h"):
        build_config.build_plan(environ={"MMCAL_CUDA": "1"})

    with pytest.raises(build_config.BuildError, match=r"7.0 is older than the kernels support \(7.5"):
        build_config.cuda_arch_flags("7.0;9.0")
    assert build_config.cuda_arch_flags("7.5")[0] == "-gencode=arch=compute_75,code=sm_75"


def test_a_failed_jit_build_names_the_compiler_error():
    from mmcal_kernels.backends.cpp.load import _first_error

    log = ("Error building extension 'mmcal_C': [1/12] c++ -MMD -MF ops.o.d -DTORCH_EXTENSION_NAME=mmcal_C\n"
           "FAILED: gate_network.cuda.o\n/src/csrc/cuda/gate_network.cu:7:10: fatal error: cuda_runtime.h: "
           "No such file or directory\ncompilation terminated.\n")  # fmt: skip
    assert _first_error(log) == "/src/csrc/cuda/gate_network.cu:7:10: fatal error: cuda_runtime.h: No such file or directory"
    assert _first_error("ninja: build stopped\n") == "ninja: build stopped"


@pytest.mark.parametrize("outcome", ["built", "failed"])
def test_build_info_is_written_only_after_the_build(outcome, tmp_path):
    """setup.py records the torch _C was built against once every library has
    built: written before, a failed or interrupted build left the old
    libraries beside a record of the new torch (the loader then refused a good
    _C, or loaded one built for another torch)."""
    setup_py = runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="setup_under_test")
    package = tmp_path / "mmcal_kernels"
    package.mkdir()
    (package / "_build_info.py").write_text("TORCH_VERSION = 'the old build'\n")
    wheel_dir = tmp_path / "build_lib"
    (wheel_dir / "mmcal_kernels").mkdir(parents=True)

    class Base:
        inplace, build_lib = False, str(wheel_dir)

        def run(self):
            assert "old build" in (package / "_build_info.py").read_text(), "written before the build"
            if outcome == "failed":
                raise RuntimeError("a compiler error")

    build = setup_py["_recording_build_ext"](Base, dict(EXTENSION=True, TORCH_VERSION="2.99.0"))
    build.run.__globals__["PACKAGE_DIR"] = str(package)
    if outcome == "failed":
        with pytest.raises(RuntimeError, match="a compiler error"):
            build().run()
        assert "old build" in (package / "_build_info.py").read_text()
        assert not (wheel_dir / "mmcal_kernels" / "_build_info.py").exists()
    else:
        build().run()
        for where in (package, wheel_dir / "mmcal_kernels"):
            assert "TORCH_VERSION = '2.99.0'" in (where / "_build_info.py").read_text()


def _fake_compiler(tmp_path, prints):
    """A compiler whose -print-file-name=libstdc++.so answer is ``prints`` (a new file each call)."""
    path = tmp_path / f"fake-g++-{len(list(tmp_path.glob('fake-g++-*')))}"
    path.write_text(f"#!/bin/sh\necho '{prints}'\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="libstdc++ linking is checked on Linux")
def test_a_compiler_without_a_shared_libstdcxx_gets_the_system_one(clean_env, monkeypatch, tmp_path):
    """The GPU machine's /opt/gcc has only libstdc++.a: linked statically into
    _C, the runtime's second copy crashed formatting an error message."""
    static_only = _fake_compiler(tmp_path, "libstdc++.so")  # gcc's answer when it finds no such file
    monkeypatch.setenv("CXX", static_only)
    with pytest.warns(UserWarning, match="has no shared libstdc"):
        flags = build_config.shared_cxx_runtime_flags()
    assert flags == ["-Wl,--push-state,--no-as-needed", "-l:libstdc++.so.6", "-Wl,--pop-state"]
    with pytest.warns(UserWarning, match="has no shared libstdc"):
        plan = build_config.build_plan()
    assert all(lib.link[-3:] == tuple(flags) for lib in plan)
    dangling = tmp_path / "libstdc++.so"
    dangling.symlink_to(tmp_path / "missing.so.6")
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, str(dangling)))
    with pytest.warns(UserWarning, match="has no shared libstdc"):
        assert build_config.shared_cxx_runtime_flags() == flags
    shared = tmp_path / "libstdc++-real.so"
    shared.write_bytes(b"")
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, str(shared)))
    assert build_config.shared_cxx_runtime_flags() == []
    monkeypatch.setenv("CXX", f"env {static_only}")  # a launcher before the compiler
    with pytest.warns(UserWarning, match="has no shared libstdc"):
        assert build_config.shared_cxx_runtime_flags() == flags
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert build_config.shared_cxx_runtime_flags() == []
