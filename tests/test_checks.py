"""the spec's "Bad input" table, one test per row, through the module. Each must
raise its type before any computation (the backend is replaced by one that
fails if it is ever called), naming the argument, what it got and what it
expects."""

import dataclasses

import pytest
import torch

from mmcal_kernels import PreFusionCalibration, backends


@pytest.fixture(autouse=True)
def backend_must_not_run(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the backend ran before the input was rejected")

    ref = backends._REGISTRY["reference"]
    monkeypatch.setitem(
        backends._REGISTRY, "reference", dataclasses.replace(ref, summary=boom, gates=boom, modulate=boom, calibrate=boom)
    )


@pytest.fixture
def module():
    return PreFusionCalibration([4, 3], shared_dim=4, layouts=["sequence", "spatial"])


def seq(b=2, p=5, d=4, **kw):
    return torch.randn(b, p, d, **kw)


def spa(b=2, d=3, *s, **kw):
    return torch.randn(b, d, *(s or (2, 2)), **kw)


def test_fewer_than_two_modalities(module):
    with pytest.raises(ValueError, match=r"^features: calibration compares modalities, so it needs at least 2; got 1"):
        module([seq()])
    with pytest.raises(ValueError, match=r"^dims: .*at least 2; got 1"):
        PreFusionCalibration([4])


def test_batch_sizes_that_differ(module):
    with pytest.raises(ValueError, match=r"^features\[1\]: batch size 3 differs from features\[0\]'s 2"):
        module([seq(b=2), spa(3)])


def test_channel_count_differs_from_dims(module):
    with pytest.raises(ValueError, match=r"^features\[0\]: expected 4 channels \(last dim of a 'sequence' input\), got 6"):
        module([seq(d=6), spa()])
    with pytest.raises(ValueError, match=r"^features\[1\]: expected 3 channels \(dim 1 of a 'spatial' input\), got 5"):
        module([seq(), spa(2, 5)])


def test_sequence_input_without_three_dims(module):
    with pytest.raises(ValueError, match=r"^features\[0\]: a 'sequence' input must be \[B, P, D\] \(3 dims\), got shape \(2, 4\)"):
        module([torch.randn(2, 4), spa()])


def test_mask_shape_not_b_p(module):
    with pytest.raises(ValueError, match=r"^masks\[0\]: expected shape \[B, P\] = \(2, 5\), got \(2, 6\)"):
        module([seq(), spa()], masks=[torch.ones(2, 6, dtype=torch.bool), None])


def test_masks_not_a_list_of_one_per_modality(module):
    with pytest.raises(ValueError, match=r"^masks: expected a list with one entry .* per modality \(2\), got a generator"):
        module([seq(), spa()], masks=(m for m in [None, None]))
    with pytest.raises(ValueError, match=r"^masks: expected a list with one entry .* per modality \(2\), got a Tensor"):
        module([seq(), spa()], masks=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^masks: expected a list with one entry .* per modality \(2\), got 1 entries"):
        module([seq(), spa()], masks=[None])


def test_mask_on_spatial_input(module):
    with pytest.raises(ValueError, match=r"^masks\[1\]: masks apply to 'sequence' inputs only"):
        module([seq(), spa()], masks=[None, torch.ones(2, 4, dtype=torch.bool)])


def test_present_shape_not_b_m(module):
    with pytest.raises(ValueError, match=r"^present: expected shape \[B, M\] = \(2, 2\), got \(2, 3\)"):
        module([seq(), spa()], present=torch.ones(2, 3, dtype=torch.bool))


def test_tensors_on_different_devices(module):
    # A CPU-only machine still has the meta device: it is a different device.
    with pytest.raises(ValueError, match=r"^features\[1\]: on meta, but features\[0\] is on cpu"):
        module([seq(), spa(device="meta")])
    with pytest.raises(ValueError, match=r"^masks\[0\]: on meta, but the features are on cpu"):
        module([seq(), spa()], masks=[torch.ones(2, 5, dtype=torch.bool, device="meta"), None])
    with pytest.raises(ValueError, match=r"^present: on meta, but the features are on cpu"):
        module([seq(), spa()], present=torch.ones(2, 2, dtype=torch.bool, device="meta"))
    # The module names a parameter as its user reaches it, not by its place in the functional API's lists.
    with pytest.raises(ValueError, match=r"^proj\.0\.weight: on cpu, but the features are on meta"):
        module([seq(device="meta"), spa(device="meta")])


def test_tensors_that_are_not_dense(module):
    """Sparse tensors have no strides for the kernels to read: refused by name on
    every backend, where the C++ ops failed inside the dispatcher, naming none."""
    for backend in ("reference", "cpu"):
        module.backend = backend
        with pytest.raises(TypeError, match=r"^features\[0\]: expected a dense \(strided\) tensor, got layout torch.sparse_coo"):
            module([seq().to_sparse(), spa()])
        with pytest.raises(TypeError, match=r"^masks\[0\]: expected a dense \(strided\) tensor, got layout torch.sparse_coo"):
            module([seq(), spa()], masks=[torch.ones(2, 5, dtype=torch.bool).to_sparse(), None])
        with pytest.raises(TypeError, match=r"^present: expected a dense \(strided\) tensor, got layout torch.sparse_coo"):
            module([seq(), spa()], present=torch.ones(2, 2, dtype=torch.bool).to_sparse())


def test_a_wrong_layer_is_named_as_the_module_holds_it(module):
    module.gate_dim[1] = torch.nn.Linear(4, 4)  # modality 1 has 3 channels
    with pytest.raises(ValueError, match=r"^gate_dim\.1\.weight: expected shape \(3, 4\), got \(4, 4\)"):
        module([seq(), spa()])
    module.gate_dim[1] = torch.nn.Linear(4, 3, bias=False)
    with pytest.raises(TypeError, match=r"^gate_dim\.1\.bias: expected a tensor, got NoneType"):
        module([seq(), spa()])
    module.gate_dim[1] = torch.nn.Linear(4, 3)
    module.proj[1] = torch.nn.Linear(3, 6)
    with pytest.raises(ValueError, match=r"^proj\.1\.weight: shared dim d = 6 differs from proj\.0\.weight's 4"):
        module([seq(), spa()])


def test_mask_or_present_not_bool(module):
    with pytest.raises(TypeError, match=r"^masks\[0\]: expected a bool tensor \(True = valid position\), got torch.int64"):
        module([seq(), spa()], masks=[torch.ones(2, 5, dtype=torch.long), None])
    with pytest.raises(TypeError, match=r"^present: expected a bool tensor \(False = modality missing\), got torch.float32"):
        module([seq(), spa()], present=torch.ones(2, 2))


def test_features_of_different_dtypes(module):
    with pytest.raises(TypeError, match=r"^features\[1\]: dtype torch.float16 differs from features\[0\]'s torch.float32"):
        module([seq(), spa(dtype=torch.float16)])


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, torch.float8_e4m3fn])
def test_unsupported_dtype(module, dtype):
    with pytest.raises(TypeError, match=rf"^features\[0\]: unsupported dtype {dtype}; expected one of float16, bfloat16, float32, float64"):
        module([seq().to(dtype), spa().to(dtype)])


def test_constructor_arguments():
    with pytest.raises(ValueError, match=r"^layouts\[1\]: expected one of \('sequence', 'spatial'\), got 'image'"):
        PreFusionCalibration([4, 3], layouts=["sequence", "image"])
    with pytest.raises(ValueError, match=r"^layouts: expected one of \('sequence', 'spatial'\), got 'spatial2'"):
        PreFusionCalibration([4, 3], layouts="spatial2")  # one string is the argument, not its entry [0]
    with pytest.raises(ValueError, match=r"^layouts: expected one entry per modality \(2\), got 3"):
        PreFusionCalibration([4, 3], layouts=["sequence"] * 3)
    with pytest.raises(ValueError, match=r"^backend: unknown backend 'gpu'"):
        PreFusionCalibration([4, 3], backend="gpu")
    module = PreFusionCalibration([4, 3])
    with pytest.raises(ValueError, match=r"^backend: unknown backend 'gpu'"):
        module.backend = "gpu"  # checked where it is set, not at the next call
    assert module.backend == "auto" and "backend='auto'" in repr(module)
    with pytest.raises(ValueError, match=r"^dims\[1\]: expected a positive channel count, got 0"):
        PreFusionCalibration([4, 0])


def test_constructor_argument_types():
    with pytest.raises(TypeError, match=r"^dims: expected a list of ints \(one channel count per modality\), got str '43'"):
        PreFusionCalibration("43")
    with pytest.raises(TypeError, match=r"^dims\[0\]: expected a positive channel count, got float 768.0"):
        PreFusionCalibration([768.0, 74])
    with pytest.raises(TypeError, match=r"^shared_dim: expected a positive int, got float 128.0"):
        PreFusionCalibration([4, 3], shared_dim=128.0)
    with pytest.raises(TypeError, match=r"^hidden_dim: expected a positive int, got str '8'"):
        PreFusionCalibration([4, 3], hidden_dim="8")
    with pytest.raises(TypeError, match=r"^layouts: expected one of \('sequence', 'spatial'\) or a list with one per modality, got NoneType"):
        PreFusionCalibration([4, 3], layouts=None)


def test_functional_parameter_errors():
    from mmcal_kernels import functional

    params = PreFusionCalibration([4, 3], shared_dim=4).gate_params()
    features = [seq(), seq(d=3)]
    with pytest.raises(TypeError, match=r"^params\[1\]: expected a GateParams \(or a tuple of its 8 tensors\), got a tensor"):
        functional.calibrate(features, [params[0], torch.randn(3)])
    with pytest.raises(TypeError, match=r"^params\[0\].proj_bias: expected a tensor, got list"):
        functional.calibrate(features, [params[0]._replace(proj_bias=[0.0] * 4), params[1]])
    other_d = PreFusionCalibration([4, 3], shared_dim=6).gate_params()
    with pytest.raises(ValueError, match=r"^params\[1\].proj_weight: shared dim d = 6 differs from params\[0\]\.proj_weight's 4"):
        functional.calibrate(features, [params[0], other_d[1]])
    with pytest.raises(TypeError, match=r"^layouts: expected one of"):
        functional.calibrate(features, params, layouts=None)
    # dims is the functional API's own argument: the message blames no module.
    with pytest.raises(ValueError, match=r"^features: expected 1 modalities, one per entry of dims \[4\], got 2"):
        functional.calibrate(features, params, dims=[4])
    sparse = params[0]._replace(proj_weight=params[0].proj_weight.to_sparse())
    with pytest.raises(TypeError, match=r"^params\[0\]\.proj_weight: expected a dense \(strided\) tensor"):
        functional.calibrate(features, [sparse, params[1]])
