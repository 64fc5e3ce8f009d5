"""Compiled contenders that provably run compiled: one watched backend per contender.

Every compiled contender of every workload gets its own ``CompileWatch`` (a
fresh backend object) after ``torch._dynamo.reset()``, and is compiled with
``fullgraph=True``. So:

* no contender inherits another's cache entries on the module's shared
  ``forward`` code (the cause of the old run's silent eager rows: dynamo's
  recompile limit of 8 per code object was hit, and it then ran the frame
  eagerly with only a warning);
* a graph break raises at the first call (``fullgraph``);
* the watch counts compilations and calls of the compiled graphs, and
  ``check`` fails loudly (``CompileFallback``) when a timed step did not run
  a compiled graph (an eager fallback) or a compile happened while timing (a
  recompile);
* under ``mode="reduce-overhead"`` it also counts Inductor's CUDA-graph skips
  (a CPU tensor in the graph, a mutated input...): Inductor then runs the
  compiled code without graphs and says so only in a log line, and the row
  would be labelled with graphs it never used.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch


class CompileFallback(RuntimeError):
    """A compiled contender ran (partly) eagerly, recompiled while timed, or broke its graph."""


@dataclass
class Snapshot:
    compiles: int
    calls: int
    graph_skips: int = 0


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


class CompileWatch:
    """A dynamo backend that compiles with Inductor (or ``inner``) and counts.

    ``mode`` is torch.compile's mode for Inductor (``None``, ``"reduce-overhead"``);
    ``inner`` a registered dynamo backend name instead of Inductor (tests use
    ``"eager"``: no codegen, same dynamo behaviour).
    """

    def __init__(self, label: str = "", mode: Optional[str] = None, inner: Optional[str] = None):
        self.label, self.mode = label, mode
        self.compiles = 0  # graphs compiled
        self.calls = 0  # calls of compiled graphs
        if inner is not None:
            self._inner = torch._dynamo.lookup_backend(inner)
        else:
            self._inner = torch._TorchCompileInductorWrapper(mode, None, None)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.compiles += 1
        compiled = self._inner(gm, example_inputs)

        def run(*args):
            self.calls += 1
            return compiled(*args)

        return run

    def compile(self, fn: Callable) -> Callable:
        return torch.compile(fn, backend=self, fullgraph=True)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.compiles, self.calls, _cudagraph_skips())

    def _check_graphs(self, before: Snapshot, what: str) -> None:
        skipped = _cudagraph_skips() - before.graph_skips
        if self.mode == "reduce-overhead" and skipped:
            raise CompileFallback(
                f"{what}: Inductor skipped CUDA graphs for {skipped} compiled graph(s), so the row would run "
                f"without them (TORCH_LOGS=cudagraphs says why)"
            )

    def check(self, before: Snapshot, steps: int, what: str) -> None:
        """After ``steps`` calls since ``before``: each ran a compiled graph and none compiled."""
        self._check_graphs(before, what)
        ran, compiled = self.calls - before.calls, self.compiles - before.compiles
        if compiled:
            raise CompileFallback(
                f"{what}: {compiled} recompilation(s) during {steps} timed call(s) of a compiled contender; "
                f"the timing mixes compiles in (TORCH_LOGS=recompiles says why)"
            )
        if ran < steps:
            raise CompileFallback(
                f"{what}: only {ran} of {steps} timed call(s) ran a compiled graph; the rest ran EAGERLY "
                f"(dynamo skipped the frame: recompile limit hit, or a dispatch mode was active)"
            )

    def check_compiled(self, before: Snapshot, what: str) -> None:
        """After the first call: it compiled at least one graph and ran it (with CUDA graphs, if asked)."""
        self._check_graphs(before, what)
        if self.compiles == 0 or self.calls == before.calls:
            raise CompileFallback(
                f"{what}: the first call of a compiled contender compiled {self.compiles} graph(s) and ran "
                f"{self.calls - before.calls}: it ran EAGERLY (dynamo skipped the frame)"
            )


def fresh() -> None:
    """Forget every compiled frame: the next compiled contender starts from nothing."""
    torch._dynamo.reset()


@contextlib.contextmanager
def strict_recompiles():
    """Make hitting the recompile limit an error where this torch has the switch (2.6+)."""
    cfg = torch._dynamo.config
    name = "fail_on_recompile_limit_hit"
    if not hasattr(cfg, name):
        yield
        return
    with cfg.patch(**{name: True}):
        yield
