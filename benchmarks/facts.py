"""Model facts: parameters, counted FLOPs per step, and the authors' reported accuracy where the registry has it."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from stexport.spec import GraphModule, IOSpec

FLOP_COUNTER = "torch.utils.flop_counter.FlopCounterMode (matmul/conv/bmm/addmm; a multiply-add counts as 2 FLOPs)"


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(graph: GraphModule, spec: IOSpec) -> int:
    """FLOPs of one exported step: ``step`` on one frame (stream form) or ``forward_packed`` on one clip."""
    from torch.utils.flop_counter import FlopCounterMode

    example = spec.example_inputs()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        graph(**example)
    return int(counter.get_total_flops())


_TOP1 = re.compile(r"(\d{1,2}(?:\.\d+)?)\s*%\s*top-?1", re.IGNORECASE)


def reported_accuracy(entry: Any) -> dict[str, Any] | None:
    """Top-1 accuracy the authors report for the released checkpoint: an ``accuracy`` attribute of the registry
    entry if it has one, else a ``"NN.N% top-1"`` figure in its description. ``None`` when neither exists."""
    if entry is None:
        return None
    acc = getattr(entry, "accuracy", None)
    if isinstance(acc, (int, float)):
        return {"top1": float(acc), "dataset": entry.dataset, "source": "registry entry (accuracy)"}
    if isinstance(acc, dict) and "top1" in acc:
        return {"dataset": entry.dataset, "source": "registry entry (accuracy)", **acc}
    m = _TOP1.search(entry.description or "")
    if m:
        return {"top1": float(m.group(1)), "dataset": entry.dataset, "source": "registry entry (description)"}
    return None
