"""Every Triton kernel, in every autotune configuration of each architecture,
compiles ahead of time for sm_80 and sm_90 on a machine without a GPU
(``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``); the
ptxas shipped in the Triton wheel reports registers and spills of the PTX with
``-v``, and any spill fails the test.

It runs in the main pytest process: the interpreter (TRITON_INTERPRET=1)
replaces the kernels with Python functions that cannot be compiled."""

import os
import re
import subprocess

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") == "1":
    pytest.skip("the interpreter replaces the kernels; run AOT compiles without TRITON_INTERPRET", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mmcal_kernels.backends.triton import configs, elementwise, reductions  # noqa: E402
from mmcal_kernels.backends.triton.slots import MAX_SLOTS  # noqa: E402



def _ptxas(arch: int) -> str:
    """The ptxas Triton itself compiles with for ``arch`` (its wheel ships more than one)."""
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        return get_ptxas(arch).path
    except TypeError:  # older triton: one ptxas for every architecture
        return get_ptxas().path


# Per-slot argument types: bf16 features, fp32 compute dtype, uint8 masks;
# the channel stride is 1 (channels-last rows), as Triton specialises it.
REDUCE_SLOT = {"x": "*bf16", "y": "*bf16", "m": "*u8", "o": "*fp32", "P": "i32", "D": "i32", "sxb": "i64", "sxp": "i32",
               "sxd": 1, "syb": "i64", "syp": "i32", "syd": 1, "S": "i32"}  # fmt: skip
MAP_SLOT = {"s": "*bf16", "g": "*fp32", "q": "*fp32", "m": "*u8", "o": "*bf16", "P": "i32", "D": "i32", "ssb": "i64",
            "ssp": "i32", "ssd": 1, "sob": "i64", "sop": "i32", "sod": 1}  # fmt: skip
VARIANTS = {  # name: (kernel, slot types, the kernel's flag constexprs) with 3 live modalities
    "summaries": (reductions.reduce_kernel, REDUCE_SLOT, {"HAS_DY": False, "MASKS": 0b011}),
    "gate_grads": (reductions.reduce_kernel, REDUCE_SLOT, {"HAS_DY": True, "MASKS": 0}),
    "modulate": (elementwise.map_kernel, MAP_SLOT, {"SRCS": 0b111, "DSS": 0, "MASKS": 0}),
    "input_grads": (elementwise.map_kernel, MAP_SLOT, {"SRCS": 0b111, "DSS": 0b111, "MASKS": 0b011}),
}
TABLES = {reductions.reduce_kernel: configs.REDUCE_CONFIGS, elementwise.map_kernel: configs.MAP_CONFIGS}


def _cases():
    for name, (tuner, _, _) in VARIANTS.items():
        for arch in configs.ARCHS:
            for i, cfg in enumerate(configs.for_arch(TABLES[tuner], arch)):
                yield pytest.param(name, arch, cfg, id=f"{name}-sm{arch}-{i}")


def _source(tuner, slot_types, flags, cfg):
    fn = tuner.fn
    signature, constexprs = {}, {}
    for slot in range(MAX_SLOTS):
        for arg, kind in slot_types.items():
            name = f"{arg}{slot}"
            if not isinstance(kind, str):  # a specialised value
                signature[name], constexprs[name] = "constexpr", kind
            else:
                signature[name] = kind
    signature.update(B="i32", SIZE_CLASS="i32")
    for name, value in dict(NUM=3, **flags, **cfg.kwargs).items():
        signature[name], constexprs[name] = "constexpr", value
    assert list(signature) == fn.arg_names, "the test's signature is out of step with the kernel's arguments"
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs)


@pytest.mark.parametrize("variant,arch,cfg", _cases())
def test_compiles_without_spills(variant, arch, cfg, tmp_path):
    tuner, slot_types, flags = VARIANTS[variant]
    compiled = triton.compile(_source(tuner, slot_types, flags, cfg), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})  # fmt: skip
    assert compiled.asm.get("cubin"), "no cubin"
    ptx = tmp_path / "kernel.ptx"
    ptx.write_text(compiled.asm["ptx"])
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    report = subprocess.run([_ptxas(arch), "-v", f"--gpu-name={gpu}", str(ptx), "-o", str(tmp_path / "k.cubin")],
                            capture_output=True, text=True, check=True).stderr  # fmt: skip
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", report)]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    print(f"{variant} sm_{arch} {cfg}: registers {registers}, spill bytes {spills}")
    assert registers and spills, f"could not read ptxas -v:\n{report}"
    assert max(spills) == 0, f"{variant} spills on sm_{arch} with {cfg}:\n{report}"
