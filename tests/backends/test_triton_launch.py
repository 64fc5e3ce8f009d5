"""How the Triton launcher chooses a configuration, without a GPU: an in-place
launch is never autotuned (the autotuner's timing runs would write X several
times), every other launch is. Runs in the main test process: it launches
nothing, it records what would be launched."""

import types

import pytest
import torch

triton = pytest.importorskip("triton")
from mmcal_kernels.backends.triton import configs  # noqa: E402
from mmcal_kernels.backends.triton import elementwise  # noqa: E402, F401  (registers mmcal::triton_modulate*)


class Recorder:
    def __init__(self):
        self.wrapped = []

    def __call__(self, fn):
        self.wrapped.append(fn)
        return _Launchable()


class _Launchable:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _tuner():
    first, second = triton.Config({"BLOCK_P": 1}, num_warps=4), triton.Config({"BLOCK_P": 2}, num_warps=8)
    return types.SimpleNamespace(fn="the bare kernel", configs=[first, second], mmcal_table=[((80, 90), first), ((90,), second)])


@pytest.mark.parametrize("tune", [True, False])
def test_launch_autotunes_only_when_asked(monkeypatch, tune):
    recorder = Recorder()
    monkeypatch.setattr(torch.library, "wrap_triton", recorder)
    monkeypatch.setattr(configs, "interpreting", lambda: False)
    tuner = _tuner()
    configs.launch(tuner, lambda meta: (1,), [], {}, tune=tune)
    assert recorder.wrapped == [tuner if tune else "the bare kernel"]


def test_in_place_modulation_is_launched_untuned(monkeypatch):
    calls = []
    monkeypatch.setattr(configs, "launch", lambda tuner, grid, args, constexprs, tune=True: calls.append(tune))
    x, g = torch.randn(2, 3, 4), torch.rand(2, 4)
    torch.ops.mmcal.triton_modulate([x], [g], [0])
    torch.ops.mmcal.triton_modulate_([x], [g], [0])
    assert calls == [True, False]
