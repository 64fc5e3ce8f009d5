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

from mmcal_kernels.backends.triton import configs, elementwise, gate_network, reductions, shared_memory  # noqa: E402
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


def _ptxas_report(compiled, arch: int, tmp_path):
    """(registers, spill bytes, ptxas -v's report) of a kernel compiled for sm_<arch>."""
    assert compiled.asm.get("cubin"), "no cubin"
    ptx = tmp_path / "kernel.ptx"
    ptx.write_text(compiled.asm["ptx"])
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    report = subprocess.run([_ptxas(arch), "-v", f"--gpu-name={gpu}", str(ptx), "-o", str(tmp_path / "k.cubin")],
                            capture_output=True, text=True, check=True).stderr  # fmt: skip
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", report)]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    return registers, spills, report


@pytest.mark.parametrize("variant,arch,cfg", list(_cases()))
def test_compiles_without_spills(variant, arch, cfg, tmp_path):
    tuner, slot_types, flags = VARIANTS[variant]
    compiled = triton.compile(_source(tuner, slot_types, flags, cfg), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})  # fmt: skip
    registers, spills, report = _ptxas_report(compiled, arch, tmp_path)
    print(f"{variant} sm_{arch} {cfg}: registers {registers}, spill bytes {spills}")
    assert registers and spills, f"could not read ptxas -v:\n{report}"
    assert max(spills) == 0, f"{variant} spills on sm_{arch} with {cfg}:\n{report}"


# The gate network (steps 2-6): its kernels take per-slot parameter pointers and
# shared [B, M, ...] tensors, so their signatures are spelled out here. fp32 and
# fp64 compute (parameters in bf16 with fp32, in fp64 with fp64), d = r = 32,
# three live modalities, contiguous summaries (channel stride 1, as Triton
# specialises it). Registers and spills are printed, not asserted: at these
# sizes the FMA dots of the backward spill (see the report in the commit log).
GATE_D = GATE_R = 32


def _gate_variants(ct: str, pt: str, tiles=(gate_network.BLOCK_B, gate_network.BLOCK_K)):
    blocks = dict(NUM=3, HAS_PRESENT=True, BLOCK_B=tiles[0], BLOCK_DD=gate_network._pow2(GATE_D),
                  BLOCK_R=gate_network._pow2(GATE_R), BLOCK_K=tiles[1])  # fmt: skip
    fwd_slot = {"s": ct, "ssb": "i32", "ssd": 1, "pw": pt, "pb": pt, "hw": pt, "hb": pt, "iw": pt, "ib": pt, "dw": pt,
                "db": pt, "pre": ct, "dgo": ct, "go": ct, "D": "i32", "R": "i32"}  # fmt: skip
    fwd_shared = {"pr": "*u8", **{k: ct for k in ("u", "nrm", "ctx", "agr", "sup", "con", "ig")}, "B": "i32", "d": "i32"}
    bwd_slot = {"gg": ct, "sgb": "i32", "sgd": 1, "s": ct, "ssb": "i32", "ssd": 1, "pw": pt, "hw": pt, "iw": pt,
                "dw": pt, "pre": ct, "dgi": ct, "gs": ct, "D": "i32", "R": "i32", "base": "i32"}  # fmt: skip
    bwd_shared = {"pr": "*u8", **{k: ct for k in ("u", "nrm", "ctx", "agr", "sup", "con", "ig", "scr", "dcx", "dsv",
                  "dcv", "ws")}, "B": "i32", "d": "i32", "width": "i32", "blocks": "i32"}  # fmt: skip
    red_slot = {"base": "i32", "D": "i32", "R": "i32", **{k: pt for k in "abcefghi"}}
    red_shared = {"ws": ct, "rows": "i32", "width": "i32", "d": "i32"}
    return {
        "gates": (gate_network.gates_kernel, fwd_slot, fwd_shared, blocks),
        "gates_backward": (gate_network.gates_backward_kernel, bwd_slot, bwd_shared, blocks),
        "gates_reduce": (gate_network.reduce_partials_kernel, red_slot, red_shared,
                         dict(NUM=3, BLOCK_C=gate_network.BLOCK_C)),  # fmt: skip
    }


GATE_DTYPES = {"fp32": ("*fp32", "*bf16"), "fp64": ("*fp64", "*fp64")}


def _gate_source(fn, slot_types, shared_types, consts):
    signature, constexprs = {}, {}
    for slot in range(MAX_SLOTS):
        for arg, kind in slot_types.items():
            name = f"{arg}{slot}"
            if not isinstance(kind, str):
                signature[name], constexprs[name] = "constexpr", kind
            else:
                signature[name] = kind
    signature.update(shared_types)
    for name, value in consts.items():
        signature[name], constexprs[name] = "constexpr", value
    assert list(signature) == fn.arg_names, "the test's signature is out of step with the kernel's arguments"
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs)


# MMCAL_TRITON_GATE_BLOCKS: the default (tl.dot), and the forward's blocks of
# 4 samples, whose products broadcast and sum (the other branch of _mm), in
# fp32 only (CI's time: the interpreter tests take the branch in fp64 too).
# The backward never runs below 16 samples (gate_network.BACKWARD_MIN_SAMPLES).
GATE_TILES = {"16x16": (16, 16), "4x16": (4, 16)}


@pytest.mark.parametrize("kernel, tiles", [("gates", t) for t in GATE_TILES]
                         + [("gates_backward", "16x16"), ("gates_reduce", "16x16")])  # fmt: skip
@pytest.mark.parametrize("dtype", list(GATE_DTYPES))
@pytest.mark.parametrize("arch", configs.ARCHS)
def test_gate_network_compiles(kernel, tiles, dtype, arch, tmp_path):
    if tiles != "16x16" and dtype != "fp32":
        pytest.skip("the broadcast branch compiles in fp32 here; fp64 runs it under the interpreter")
    if kernel in ("gates", "gates_backward") and dtype == "fp64" and not gate_network.FP64_KERNELS:
        pytest.skip(f"triton {triton.__version__} cannot lower the fp64 gate kernels (the ops take the torch formulas there)")
    tuner, slot_types, shared_types, consts = _gate_variants(*GATE_DTYPES[dtype], GATE_TILES[tiles])[kernel]
    (cfg,) = [c for archs, c in tuner.mmcal_table if arch in archs]
    compiled = triton.compile(_gate_source(tuner.fn, slot_types, shared_types, consts),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})  # fmt: skip
    registers, spills, report = _ptxas_report(compiled, arch, tmp_path)
    print(f"{kernel} {tiles} {dtype} sm_{arch} d=r={GATE_D}: registers {registers}, spill bytes {spills}, "
          f"n_spills {getattr(compiled.metadata, 'n_spills', None)}, shared {compiled.metadata.shared} B")  # fmt: skip
    assert registers and spills, f"could not read ptxas -v:\n{report}"
    if kernel != "gates_reduce":
        # The guard's estimate (shared_memory.estimate) must not fall short of what a compile asks for.
        element_size = 8 if dtype == "fp64" else 4
        estimated = dict(zip(("gates", "gates_backward"), shared_memory.estimate(
            arch, consts["BLOCK_DD"], consts["BLOCK_R"], element_size, GATE_TILES[tiles])))[kernel]  # fmt: skip
        assert compiled.metadata.shared <= estimated, f"{kernel} asks for {compiled.metadata.shared} B, estimated {estimated}"
