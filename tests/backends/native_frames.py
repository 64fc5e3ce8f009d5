"""Native frames of a child process that may die of SIGSEGV: Python's
faulthandler shows only Python frames, and the GPU machine has no gdb. A test
preloads ``segv_trace.c`` (compiled here with ``cc``) into the child, and
names the frames that fall in this package's shared objects with ``nm``."""

from __future__ import annotations

import bisect
import os
import re
import shutil
import subprocess

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "segv_trace.c")
FRAME = re.compile(r"^(?P<obj>/\S+?)\((?P<sym>[^)+]*)\+0x(?P<off>[0-9a-f]+)\)")


def preload_env(workdir: str) -> dict:
    """``{"LD_PRELOAD": ...}`` with the compiled tracer, or ``{}`` without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return {}
    lib = os.path.join(workdir, "segv_trace.so")
    built = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", lib, SOURCE], capture_output=True, text=True)
    return {"LD_PRELOAD": lib} if built.returncode == 0 else {}


def _symbols(obj: str) -> list[tuple[int, str]]:
    listed = subprocess.run(["nm", "-C", "--defined-only", obj], capture_output=True, text=True)
    table = []
    for line in listed.stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            table.append((int(parts[0], 16), parts[2]))
    return sorted(table)


def name_frames(stderr: str, only: str = "mmcal") -> str:
    """The tracer's frames in objects whose path contains ``only``, each with
    the function it falls in (from ``nm``; '' where nm is missing)."""
    if shutil.which("nm") is None:
        return ""
    tables, named = {}, []
    for line in stderr.splitlines():
        m = FRAME.match(line.strip())
        if not m or only not in m["obj"]:
            continue
        table = tables.setdefault(m["obj"], _symbols(m["obj"]))
        offset = int(m["off"], 16)
        if m["sym"]:  # an exported symbol plus an offset from it
            named.append(f"{m['sym']}+0x{offset:x} in {os.path.basename(m['obj'])}")
            continue
        i = bisect.bisect_right(table, (offset, "\uffff")) - 1
        where = f"{table[i][1]}+0x{offset - table[i][0]:x}" if i >= 0 else f"+0x{offset:x}"
        named.append(f"{where} in {os.path.basename(m['obj'])}")
    return "\n".join(named)
