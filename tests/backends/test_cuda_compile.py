"""CUDA without a GPU: every .cu compiles with nvcc for sm_80 and sm_90, and
ptxas reports no spills and no local memory. The .cu files include no ATen or
torch header (raw pointers and a cudaStream_t), which is what makes this
possible on a machine whose torch has no CUDA."""

import os
import re
import shutil
import subprocess

import pytest

from mmcal_kernels import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CU_FILES = sorted(
    os.path.join(dirpath, f) for dirpath, _, files in os.walk(os.path.join(ROOT, "csrc")) for f in files if f.endswith(".cu")
)
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def _quoted_includes(path):
    """The csrc/ headers a file includes with quotes, and theirs, transitively."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        for name in re.findall(r'#include\s*"([^"]+)"', open(current).read()):
            header = os.path.normpath(os.path.join(os.path.dirname(current), name))
            if header not in seen:
                seen.add(header)
                todo.append(header)
    return seen


def test_cu_files_include_no_aten_or_torch_headers():
    """Not directly, nor through any csrc/ header they include."""
    assert CU_FILES, "no .cu files found"
    reached = set(CU_FILES)
    for path in CU_FILES:
        reached |= _quoted_includes(path)
    assert any(p.endswith(".cuh") for p in reached), reached
    for path in sorted(reached):
        text = open(path).read()
        assert not re.search(r"#include\s*[<\"](ATen|torch|c10)/", text), f"{path} includes an ATen/torch/c10 header"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_cu_compiles_without_spills(path, arch, tmp_path):
    # The extension's own nvcc flags (build_config) and the standard torch adds
    # to them, so the report is of what setup.py builds.
    cmd = [NVCC, "-c", path, "-o", str(tmp_path / "out.o"), *build_config.NVCC_FLAGS, build_config.TORCH_CXX_STD,
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-I", os.path.join(ROOT, "csrc")]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = result.stderr
    functions = re.findall(r"Compiling entry function '(\w+)'", report)
    assert functions, f"ptxas printed no kernel report:\n{report}"
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills and all(s == ("0", "0") for s in spills), f"spills:\n{report}"
    stacks = re.findall(r"(\d+) bytes stack frame", report)
    assert all(s == "0" for s in stacks), f"local memory (stack frame) used:\n{report}"


@pytest.mark.parametrize("name", ["ops_cuda.cpp", "gate_network_cuda.cpp"])
def test_cuda_binding_parses_against_torch_headers(name, tmp_path):
    """The CUDA host code is built only where torch has CUDA; here g++ at least
    parses it against this torch's headers and the CUDA toolkit's, so a typo
    cannot wait for a GPU machine to show. (The CPU build of torch lacks one
    generated header, cuda_cmake_macros.h; an empty one stands in.)"""
    import sysconfig

    import torch.utils.cpp_extension as ext

    cuda_include = "/usr/local/cuda/include"
    if not os.path.exists(os.path.join(cuda_include, "cuda_runtime.h")):
        pytest.skip("no CUDA toolkit headers")
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("")
    includes = [str(tmp_path), *ext.include_paths(), cuda_include, os.path.join(ROOT, "csrc"), sysconfig.get_paths()["include"]]
    cmd = ["g++", build_config.TORCH_CXX_STD, "-fsyntax-only", *(f"-I{p}" for p in includes), os.path.join(ROOT, "csrc", "cuda", name)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["80", "90"])
def test_gate_kernels_keep_loads_in_flight(arch, tmp_path):
    """The gate kernels are latency-bound (one block per sample): their dot
    products must not wait for one load before issuing the next. Read from
    the SASS (sass_loads.py): every loop of ordered_sum (a thread's long sum)
    and warp_rows (a warp's rows of a matrix-vector product) issues at least
    4 loads before it reads the first. Before them, nvcc left the projection,
    the dimension logits and the long backward sums rolled, 1-2 loads in flight."""
    from sass_loads import compile_cubin, disassemble, find_nvdisasm, per_call_site

    nvdisasm = find_nvdisasm()
    if nvdisasm is None:
        pytest.skip("no nvdisasm (CUDA toolkit or triton's copy)")
    path = os.path.join(ROOT, "csrc", "cuda", "gate_network.cu")
    source = open(path).read().split("\n")
    helpers = {"ordered_sum": "term[t] = load(", "warp_rows": "term[t][i] = load("}
    load_lines = {name: [i + 1 for i, text in enumerate(source) if marker in text] for name, marker in helpers.items()}
    assert all(len(lines) == 1 for lines in load_lines.values()), load_lines
    cubin = compile_cubin(path, arch, str(tmp_path / "k.cubin"), NVCC, os.path.join(ROOT, "csrc"))
    seen = {name: 0 for name in helpers}
    for kernel, instructions in disassemble(cubin, nvdisasm).items():
        for name, (line,) in load_lines.items():
            sites = per_call_site(instructions, through=("gate_network.cu", line))
            short = {site: flight for site, (_, flight) in sites.items() if flight < 4}
            assert not short, f"{kernel} (sm_{arch}), {name}: loads in flight per call site line: {short}"
            seen[name] += len(sites)
    # Each helper is used by every kernel of its kind (both dtypes, both block sizes).
    assert seen["ordered_sum"] >= 20 and seen["warp_rows"] >= 12, seen
