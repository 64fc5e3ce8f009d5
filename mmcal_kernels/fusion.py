"""``CalibratedFusion``: put calibration in front of an existing fusion module, unchanged."""

from __future__ import annotations

from torch import nn

from .module import PreFusionCalibration


class CalibratedFusion(nn.Module):
    """``fusion(*calibration(args[:M]), *args[M:], **kwargs)``.

    The first ``M`` positional arguments (``M = calibration.num_modalities``)
    are the features; they are calibrated and handed on in their places. The
    rest of the arguments reach ``fusion`` untouched. ``masks`` and ``present``
    are consumed by the calibration, and also passed to ``fusion`` as keyword
    arguments of those names when ``forward_masks=True``.

    The fusion module keeps its own state_dict keys under ``fusion.``, so a
    trained backbone loads with ``wrapped.fusion.load_state_dict(...)``.
    """

    def __init__(self, fusion: nn.Module, calibration: PreFusionCalibration, forward_masks: bool = False):
        super().__init__()
        if not isinstance(calibration, PreFusionCalibration):
            raise TypeError(f"calibration: expected a PreFusionCalibration, got {type(calibration).__name__}")
        if not callable(fusion):
            raise TypeError(f"fusion: expected a callable module, got {type(fusion).__name__}")
        self.fusion = fusion
        self.calibration = calibration
        self.forward_masks = forward_masks

    def forward(self, *args, masks=None, present=None, **kwargs):
        num = self.calibration.num_modalities
        if len(args) < num:
            raise ValueError(
                f"args: the first {num} positional arguments must be the modality features, got {len(args)} arguments"
            )
        calibrated = self.calibration(list(args[:num]), masks=masks, present=present)
        if self.forward_masks:
            kwargs = dict(kwargs, masks=masks, present=present)
        return self.fusion(*calibrated, *args[num:], **kwargs)

    def extra_repr(self) -> str:
        return f"forward_masks={self.forward_masks}"
