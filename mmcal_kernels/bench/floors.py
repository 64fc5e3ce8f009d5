"""docs/spec.md's byte floor of each timed pass: the fewest bytes it must move.

``|X|`` is the bytes of all features, ``|V|`` of the masks, ``|P|`` of the
parameters. The module's forward+backward is the forward (3|X|) plus the
backward (4|X|, or 2|X| when no feature needs a gradient); the parameters are
read by the forward and the backward and their gradients written once.
"""

from __future__ import annotations

from typing import Optional

PASSES = ("forward", "fwd+bwd", "fwd+bwd frozen", "summary", "gates", "gates fwd+bwd", "modulate")


def floor_bytes(pass_name: str, x: int, v: int, p: int, g: int) -> Optional[int]:
    """Bytes of the floor; ``g`` is the bytes of the gates ``[B, sum D]`` in the compute dtype.

    None for ``gates`` and ``gates fwd+bwd`` (the gate network alone, steps
    2-6): they move only small ``[B, D]``-sized tensors and have no floor worth the name.
    """
    return {
        "summary": x + v,
        "modulate": 2 * x + g,
        "forward": 3 * x + v + p,
        "fwd+bwd": 7 * x + 2 * v + 3 * p,
        "fwd+bwd frozen": 5 * x + v + 3 * p,
        "gates": None,
        "gates fwd+bwd": None,
    }[pass_name]
