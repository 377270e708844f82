"""Tiny models that exercise the spine quickly (seconds per target)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stexport.models import ClipModel, State, StreamModel


class TinyStream(StreamModel):
    """Conv -> causal temporal conv (kernel 3, buffer of 2 past frames) -> running mean pool -> linear."""

    def __init__(self, *, num_classes: int = 5, size: int = 16) -> None:
        super().__init__()
        self.num_classes, self.num_frames, self.input_size = num_classes, 4, size
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.temporal = nn.Parameter(torch.tensor([0.2, -0.5, 1.0]))
        self.fc = nn.Linear(8, num_classes)

    def init_state(self, batch_size: int = 1) -> State:
        s = self.input_size
        return {"buf": torch.zeros(batch_size, 16, s, s), "pool": torch.zeros(batch_size, 8, 1, 1),
                "count": torch.zeros(batch_size, 1, 1, 1)}

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        y = torch.relu(self.conv(frame))
        buf = state["buf"]
        mixed = self.temporal[0] * buf[:, :8] + self.temporal[1] * buf[:, 8:] + self.temporal[2] * y
        count = state["count"] + 1
        pool = state["pool"] + (mixed.mean((2, 3), keepdim=True) - state["pool"]) / count
        return self.fc(pool.flatten(1)), {"buf": torch.cat([buf[:, 8:], y], 1), "pool": pool, "count": count}

    def forward_packed(self, x: Tensor) -> Tensor:
        state = self.init_state(x.shape[0])
        logits = torch.zeros(x.shape[0], self.num_classes)
        for t in range(x.shape[2]):
            logits, state = self.step(x[:, :, t], state)
        return logits


class TinyClip(ClipModel):
    """Frames folded into channels (frame-major) -> conv -> pool -> linear."""

    def __init__(self, *, num_classes: int = 5, size: int = 16, frames: int = 4) -> None:
        super().__init__()
        self.num_classes, self.num_frames, self.input_size = num_classes, frames, size
        self.conv = nn.Conv2d(3 * frames, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward_packed(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class TinyBufferStream(TinyStream):
    """`TinyStream` whose frame buffer is declared a ``"buffer"`` state (carried in int8 by full-int8 exports); the
    running mean and the count stay accumulators."""

    def state_kinds(self) -> dict[str, str]:
        return {"buf": "buffer"}
