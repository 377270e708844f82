"""Small layers shared by several families."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class NonNegativeMaxPool2d(nn.Module):
    """``nn.MaxPool2d(kernel, stride, padding)`` for inputs known to be >= 0 (after a ReLU): pads with zeros
    instead of -inf, which gives identical results there and lowers to PAD + MAX_POOL_2D, both of which the
    XNNPACK delegate takes (a -inf PADV2 would split the TFLite graph into two delegate partitions)."""

    def __init__(self, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[N, C, H, W]``, all >= 0 -> max-pooled ``[N, C, H', W']``."""
        p = self.padding
        return F.max_pool2d(F.pad(x, (p, p, p, p)), self.kernel_size, self.stride)
