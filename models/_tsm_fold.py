"""The folded weights of TSM's stream step (`OnlineTSM.step`): eval-mode BatchNorm folded into the convolutions.

A `Folding` module names runs of its layers (conv, [BatchNorm], [ReLU | ReLU6], conv, ...; a shift site wrapping
a conv counts as that conv) in `fold_runs`; `refold_runs` folds each conv with its BatchNorm (in float64, cast to
the parameters' dtype) into non-persistent buffers ``fused_<run>_<i>_w`` / ``_b``, and `run_folded` applies a run
on them in a `StepLayout` (``"nhwc"``: ``[N, H, W, C]`` throughout, LiteRT's layout, whose converter cancels the
permutes around each conv; ``"nchw"``: ``[N, C, H, W]`` for ExecuTorch, ONNX Runtime and Core ML). The buffers are
not in the state_dict; the owning model rebuilds them after a load or a conversion (`OnlineTSM.refold`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ._movinet_layers import StepLayout
from ._tsm_shift import TemporalShift

Act = Literal["none", "relu", "relu6"]
_ACTS: dict[Act, Callable[[Tensor], Tensor]] = {"none": lambda x: x, "relu": F.relu, "relu6": F.relu6}


@dataclass(frozen=True)
class FoldUnit:
    """One conv of a run with the BatchNorm and the activation that follow it."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    act: Act

    def folded(self) -> tuple[Tensor, Tensor]:
        """Weight ``[Cout, Cin/groups, kh, kw]`` and bias ``[Cout]`` of the conv with the eval-mode BatchNorm folded
        in (computed in float64, returned in the conv's dtype)."""
        w = self.conv.weight.detach()
        b = self.conv.bias.detach() if self.conv.bias is not None else None
        if self.bn is None:
            return w, w.new_zeros(w.shape[0]) if b is None else b
        bn = self.bn
        assert bn.running_mean is not None and bn.running_var is not None
        fw, fb = fuse_conv_bn_weights(w.double(), None if b is None else b.double(), bn.running_mean.double(),
                                      bn.running_var.double(), bn.eps, bn.weight.detach().double(),
                                      bn.bias.detach().double())
        return fw.detach().to(w.dtype), fb.detach().to(w.dtype)


def fold_units(layers: Iterable[nn.Module]) -> list[FoldUnit]:
    """Group ``layers`` into conv units: each conv takes the BatchNorm and activation that follow it."""
    units: list[FoldUnit] = []
    for layer in layers:
        if isinstance(layer, TemporalShift):  # a site wrapping its conv ("wrap" style): the shift runs before
            layer = layer.net
        if isinstance(layer, nn.Conv2d):
            units.append(FoldUnit(layer, None, "none"))
        elif isinstance(layer, nn.BatchNorm2d) and units and units[-1].bn is None:
            units[-1] = FoldUnit(units[-1].conv, layer, units[-1].act)
        elif isinstance(layer, nn.ReLU6 | nn.ReLU) and units:
            units[-1] = FoldUnit(units[-1].conv, units[-1].bn, "relu6" if isinstance(layer, nn.ReLU6) else "relu")
        else:
            raise TypeError(f"cannot fold {type(layer).__name__} into a conv unit")
    return units


def in_layout(layout: StepLayout, op: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """An NCHW-only op (pooling) applied to ``x`` in ``layout`` (for NHWC two permutes LiteRT cancels)."""
    return op(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) if layout.channels_last else op(x)


class Folding(nn.Module):
    """A module whose ``step`` runs some of its layers on folded weights (see the module docstring)."""

    def fold_runs(self) -> dict[str, Iterable[nn.Module]]:
        """The runs of conv/BatchNorm/activation layers that ``step`` runs folded, by name."""
        raise NotImplementedError

    @torch.no_grad()
    def refold_runs(self) -> None:
        """Rebuild the ``fused_*`` buffers of every run from the current parameters and BatchNorm statistics."""
        for run, layers in self.fold_runs().items():
            for i, unit in enumerate(fold_units(layers)):
                w, b = unit.folded()
                self.register_buffer(f"fused_{run}_{i}_w", w, persistent=False)
                self.register_buffer(f"fused_{run}_{i}_b", b, persistent=False)

    def run_folded(self, run: str, x: Tensor, *, layout: StepLayout) -> Tensor:
        """``x`` ``[N, H, W, Cin]`` (NHWC shown, or ``layout``) through run ``run`` on the folded weights ->
        ``[N, H', W', Cout]``."""
        for i, unit in enumerate(fold_units(self.fold_runs()[run])):
            c = unit.conv
            assert isinstance(c.padding, tuple)
            x = layout.conv(x, getattr(self, f"fused_{run}_{i}_w"), getattr(self, f"fused_{run}_{i}_b"),
                            stride=c.stride[0], padding=(c.padding[0], c.padding[1]),
                            dilation=(c.dilation[0], c.dilation[1]), groups=c.groups)
            x = _ACTS[unit.act](x)
        return x
