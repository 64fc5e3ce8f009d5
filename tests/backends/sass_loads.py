"""How many global loads a compiled CUDA loop keeps in flight, read from its
SASS, with no GPU: nvdisasm (bundled with triton) prints the machine code of
a cubin built with ``-lineinfo``, each instruction under the source line it
came from and the lines it was inlined at.

Why it matters here: the gate kernels run one block per sample, so their
dot products are chains of loads from L2, and a loop that waits for each
load before it issues the next runs at one memory latency per term. nvcc
left several such loops rolled; ``ordered_sum`` in gate_network.cu issues a
batch of loads first. This reads back, per call site of a load, the loads
issued before the first instruction that reads one of their results.

    python tests/backends/sass_loads.py csrc/cuda/gate_network.cu [sm]
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field


def find_nvdisasm():
    """nvdisasm from the CUDA toolkit, else the copy triton ships."""
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    bundled = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm"))
    return bundled[0] if bundled else None


@dataclass
class Instruction:
    address: int
    text: str
    chain: tuple  # ((file, line), ...): the line itself first, then each line it was inlined at


@dataclass
class Loop:
    start: int
    end: int
    loads: list = field(default_factory=list)  # Instruction

    def contains(self, address):
        return self.start <= address <= self.end


def disassemble(cubin, nvdisasm):
    """{kernel's mangled name: [Instruction]} from a cubin built with -lineinfo."""
    text = subprocess.run([nvdisasm, "--print-line-info-inline", cubin], capture_output=True, text=True,
                          check=True, timeout=300).stdout  # fmt: skip
    kernels = {}
    parts = re.split(r"\n//-+ \.text\.(\S+)\s+-+\n", text)  # nvcc pads the name with one space, Triton more
    for name, body in zip(parts[1::2], parts[2::2]):
        # An instruction's source comes as consecutive comments, innermost first:
        # "line A inlined at line B", "line B inlined at line C", ..., "line C".
        chain, fresh, labels, pending, out = (), True, {}, [], []
        for line in body.split("\n"):
            if line.lstrip().startswith("//## File"):
                where = tuple((os.path.basename(f), int(n)) for f, n in re.findall(r'"([^"]+)", line (\d+)', line))
                chain = where if fresh else chain + tuple(w for w in where if w not in chain)
                fresh = False
                continue
            label = re.match(r"^(\.L_x_\d+):", line)
            if label:
                pending.append(label.group(1))
                continue
            ins = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
            if ins:
                address = int(ins.group(1), 16)
                labels.update((p, address) for p in pending)
                pending = []
                out.append(Instruction(address, ins.group(2), chain))
                fresh = True
        for ins in out:  # resolve branch targets to addresses
            target = re.search(r"`\((\.L_x_\d+)\)", ins.text)
            if target and target.group(1) in labels:
                ins.text = ins.text.replace(target.group(0), hex(labels[target.group(1)]))
        kernels[name] = out
    return kernels


def loops(instructions):
    """Each backward branch's [target, branch] range."""
    found = []
    for ins in instructions:
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", ins.text)
        if target and int(target.group(1), 16) < ins.address:
            found.append(Loop(int(target.group(1), 16), ins.address))
    return found


def _registers(operands):
    return [int(r) for r in re.findall(r"\bR(\d+)\b", operands)]


def _split(text):
    """(mnemonic, operands) of an instruction, its predicate guard (@P0, @!PT ...) dropped."""
    mnemonic, _, operands = re.sub(r"^@!?U?P\w+\s+", "", text).partition(" ")
    return mnemonic, operands


def loads_in_flight(instructions, loop):
    """The most global loads of ``loop`` issued before an instruction reads one of their results."""
    best, waiting = 0, {}  # destination register -> load
    for ins in instructions:
        if not loop.contains(ins.address):
            continue
        mnemonic, operands = _split(ins.text)
        regs = _registers(operands)
        is_load = mnemonic.startswith("LDG")
        # The first register operand is written, except where the instruction
        # writes memory (stores, reductions) or a predicate (compares): there all are read.
        writes_register = not mnemonic.startswith(("ST", "RED", "ATOM")) and not re.match(r"U?P", operands.strip())
        reads = regs[1:] if writes_register else regs
        if any(r in waiting for r in reads):
            best = max(best, len(set(waiting.values())))
            waiting = {}
        if is_load and regs:
            width = 4 if ".128" in mnemonic else 2 if ".64" in mnemonic else 1
            waiting.update((regs[0] + i, ins.address) for i in range(width))
    return max(best, len(set(waiting.values())))


def innermost(loops_, address):
    inside = [lp for lp in loops_ if lp.contains(address)]
    return min(inside, key=lambda lp: lp.end - lp.start) if inside else None


def per_call_site(instructions, through=None):
    """{kernel line of a call site: (its loops, the fewest loads in flight
    among them)} for the loads inside loops; with ``through`` = (file, line),
    only loads inlined through that line (e.g. the load line of a helper)."""
    found = loops(instructions)
    sites = defaultdict(set)
    for ins in instructions:
        if not _split(ins.text)[0].startswith("LDG") or not ins.chain:
            continue
        if through is not None and through not in ins.chain:
            continue
        loop = innermost(found, ins.address)
        if loop is not None:
            sites[ins.chain[-1][1]].add((loop.start, loop.end))
    report = {}
    for line, spans in sites.items():
        flights = [loads_in_flight(instructions, Loop(s, e)) for s, e in spans]
        report[line] = (len(spans), min(flights))
    return report


def compile_cubin(path, arch, out, nvcc, include):
    # -std: build_config.TORCH_CXX_STD's value (this file imports nothing of the package).
    cmd = [nvcc, "-cubin", "-lineinfo", "-std=c++20", "-O3", f"-arch=sm_{arch}", "-I", include, path, "-o", out]
    subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
    return out


def main():
    import sys
    import tempfile

    path = sys.argv[1]
    arch = sys.argv[2] if len(sys.argv) > 2 else "90"
    nvcc, nvdisasm = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc", find_nvdisasm()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as tmp:
        cubin = compile_cubin(path, arch, os.path.join(tmp, "k.cubin"), nvcc, os.path.join(root, "csrc"))
        kernels = disassemble(cubin, nvdisasm)
    source = open(path).read().split("\n")
    for name, instructions in kernels.items():
        print(name)
        for line, (count, flight) in sorted(per_call_site(instructions).items()):
            print(f"  line {line:4d}: {flight:3d} loads in flight ({count} loop(s))  {source[line - 1].strip()[:70]}")


if __name__ == "__main__":
    main()
