"""Train and evaluate the motion7 models (data `stexport.motion7.data`, registered in `stexport.motion7.models`).

Training is reproducible (fixed seeds, fresh procedural clips, a fixed number of steps)::

    python -m stexport.motion7.train --model movinet_a0_stream --out runs/
    python -m stexport.motion7.train --model tsm_mobilenetv2_online --out runs/

writes ``<out>/<name>.pt`` (a plain float32 state_dict of the built module, what ``models/weights/`` ships) and
``<out>/<name>.json`` (settings, time, test accuracy). Stream models are trained through their causal clip forward
with cross-entropy on the last frame's logits (batch norm in train mode), then evaluated in eval mode.

`evaluate` scores a PyTorch model (clip forward, or frame by frame through ``step``) or an exported artifact's
runner (``stexport.targets.get_target(t).load().Runner(path, spec)``, stepped with `stexport.parity.run_loop`) on
the same clips, so accuracy can be compared across targets and precisions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stexport.frames import preprocess
from stexport.models import VideoModel, get_entry, pack_clip
from stexport.models._registry import Preprocess
from stexport.motion7 import data as motion
from stexport.parity import run_loop
from stexport.spec import IOSpec

#: ``--model`` accepts the base architecture's name for its motion7 model
TRAINED = {"movinet_a0_stream": "movinet_a0_stream_motion7",
           "tsm_mobilenetv2_online": "tsm_mobilenetv2_online_motion7"}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that decides the trained weights (recorded next to them)."""

    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    seed: int = 0
    data_seed: int = motion.DEFAULT_SEED
    frames: int = motion.FRAMES
    #: None: cross-entropy on the last frame's logits only; t: averaged over the causal logits of frames t..T-1
    frame_loss_from: int | None = None
    #: TSM: start every shifted channel as a twin of an unshifted one (`twin_shift_init`)
    twin_init: bool = False
    threads: int = 1


#: the settings that produced the shipped weights (``python -m stexport.motion7.train --model M`` repeats them)
RECIPES: dict[str, TrainConfig] = {
    "movinet_a0_stream_motion7": TrainConfig(),
    # online TSM from scratch sits at chance for a long time; a per-frame loss and twin-channel init shorten that
    "tsm_mobilenetv2_online_motion7": TrainConfig(frame_loss_from=1, twin_init=True),
}


def resolve(name: str) -> str:
    """A motion7 model name from ``name`` (the motion7 name itself or its base architecture's)."""
    return TRAINED.get(name, name)


def build_untrained(name: str, *, seed: int = 0) -> VideoModel:
    """The registered motion7 architecture ``name`` with fresh (seeded) parameters, no shipped weights."""
    entry = get_entry(resolve(name))
    torch.manual_seed(seed)
    model: VideoModel = entry.build(num_classes=entry.num_classes, **entry.defaults)
    model.registry_name = entry.name
    return model


def twin_shift_init(model: nn.Module) -> int:
    """Initialise a TSM network so that its shift sites start out comparing a feature with itself over time.

    A site replaces channels ``[0, C/fold_div)`` of its input with the previous frame's; the block behind it then
    sees those channels at t-1 but no longer at t. Here every convolution writing into a C-channel residual stream
    (a block's last conv) gets rows ``[fold, 2*fold)`` equal to rows ``[0, fold)``, so channels ``fold + k`` and
    ``k`` of every stream start identical and a site's block sees feature k at t-1 and at t: a temporal difference
    is one 1x1 weight away. Training breaks the symmetry. Returns the number of convolutions changed.
    """
    from stexport.models._tsm_shift import TemporalShift

    folds = {site.fold_div for site in model.modules() if isinstance(site, TemporalShift)}
    if not folds:
        return 0
    fold_div = folds.pop()
    changed = 0
    with torch.no_grad():
        for block in model.modules():
            layers = getattr(block, "conv", None)
            if not isinstance(layers, nn.Sequential) or not isinstance(layers[-1], nn.BatchNorm2d):
                continue
            conv = layers[-2]
            fold = conv.out_channels // fold_div
            if isinstance(conv, nn.Conv2d) and fold > 0:
                conv.weight[fold:2 * fold] = conv.weight[:fold]
                changed += 1
    return changed


def frame_logits(model: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """Causal per-frame logits ``[N, T, K]`` of a stream model (frame t sees frames 0..t)."""
    for method in ("clip_logits", "forward_frames"):  # MoViNetStream, OnlineTSM
        if hasattr(model, method):
            return getattr(model, method)(clip)
    raise TypeError(f"{type(model).__name__} has no per-frame causal logits (clip_logits / forward_frames)")


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(name: str, *, epochs: int | None = None, log: Callable[[str], None] | None = None, **options: Any
          ) -> tuple[VideoModel, dict[str, Any]]:
    """Train motion7 model ``name`` from scratch; returns (the model in eval mode, a record of the run).

    Settings: the model's `RECIPES` entry, with ``epochs`` and any `TrainConfig` field in ``options`` replaced
    (``None`` keeps the recipe's value). Every step draws ``batch_size`` new training clips (clip indices
    ``step * batch_size + i`` of the train split), so no clip is seen twice. AdamW with warm-up and cosine decay;
    cross-entropy on ``model(clip)`` (stream models: the last frame's logits of the causal clip), or on the causal
    logits of frames ``frame_loss_from..T-1``.
    """
    changes = {k: v for k, v in {"epochs": epochs, **options}.items() if v is not None}
    cfg = replace(RECIPES.get(resolve(name), TrainConfig()), **changes)
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # 1 thread: OpenMP barriers stall badly on a shared, busy CPU
    model = build_untrained(name, seed=cfg.seed)
    if cfg.twin_init:
        twin_shift_init(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    model.train()
    t0, cpu0 = time.perf_counter(), time.process_time()
    history = []
    for epoch in range(cfg.epochs):
        losses, correct = [], 0
        for i in range(cfg.steps_per_epoch):
            step = epoch * cfg.steps_per_epoch + i
            start = step * cfg.batch_size
            clips, labels = motion.motion_clips(range(start, start + cfg.batch_size), split="train",
                                                seed=cfg.data_seed, frames=cfg.frames, size=model.input_size)
            x, y = motion.to_model_input(clips), torch.from_numpy(labels)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, cfg)
            if cfg.frame_loss_from is None:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            else:
                per_frame = frame_logits(model, x)[:, cfg.frame_loss_from:]
                logits = per_frame[:, -1]
                loss = F.cross_entropy(per_frame.reshape(-1, per_frame.shape[-1]),
                                       y.repeat_interleave(per_frame.shape[1]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(1) == y).sum())
        row = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
               "train_top1": round(correct / (cfg.steps_per_epoch * cfg.batch_size), 4),
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        say(f"epoch {row['epoch']}/{cfg.epochs}  loss {row['loss']:.4f}  train top1 {row['train_top1']:.3f}  "
            f"{row['seconds']:.0f}s")
    model.eval()
    torch.set_num_threads(threads_before)
    record = {"model": resolve(name), "config": asdict(cfg), "train_seconds": round(time.perf_counter() - t0, 1),
              "train_cpu_seconds": round(time.process_time() - cpu0, 1),
              "history": history, "torch": torch.__version__}
    return model, record


# ---- evaluation ---------------------------------------------------------------------------------------------------

def _is_module(obj: object) -> bool:
    return isinstance(obj, nn.Module)


def eval_clips(*, split: str = "test", clips: int = motion.TEST_CLIPS, seed: int = motion.DEFAULT_SEED,
             frames: int = motion.FRAMES, size: int = motion.SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation clips: (uint8 ``[N, T, H, W, 3]``, labels ``[N]``); clip ``i`` is ``motion_clip(i)``."""
    return motion.motion_clips(range(clips), split=split, seed=seed, frames=frames, size=size)


def module_logits(model: nn.Module, x: torch.Tensor, *, streamed: bool) -> torch.Tensor:
    """Last-frame logits ``[N, K]`` of ``x`` ``[N, 3, T, H, W]``: the clip forward, or ``step`` frame by frame
    from ``init_state`` (a clip model's ring buffer holds the clip after T steps)."""
    with torch.no_grad():
        if not streamed:
            return model(x)
        state = model.init_state(x.shape[0])  # type: ignore[operator]
        logits = None
        for t in range(x.shape[2]):
            logits, state = model.step(x[:, :, t].contiguous(), state)  # type: ignore[operator]
        assert logits is not None
        return logits


def runner_logits(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], spec: IOSpec,
                  frames: torch.Tensor) -> np.ndarray:
    """Logits ``[K]`` of one clip ``frames`` ``[T, 3, H, W]`` (preprocessed) through an exported artifact:
    stream form: every frame stepped from zero state (`run_loop`), the last step's logits; clip form: the packed
    clip in one call."""
    if spec.form == "clip":
        packed = pack_clip(frames.transpose(0, 1).unsqueeze(0), spec.inputs[0].layout).numpy()
        return np.asarray(run({"clip": packed})["logits"])[0]
    steps = [{"frame": frames[t:t + 1].contiguous().numpy()} for t in range(frames.shape[0])]
    return np.asarray(run_loop(run, spec, steps).outputs[-1]["logits"])[0]


def evaluate(model_or_runner: Any, *, split: str = "test", streamed: bool = False, clips: int = motion.TEST_CLIPS,
             seed: int = motion.DEFAULT_SEED, frames: int = motion.FRAMES, spec: IOSpec | None = None,
             preprocessing: Preprocess | None = None, batch_size: int = 50,
             transform: Callable[[np.ndarray], np.ndarray] | None = None,
             labels_map: Sequence[int] | None = None, data: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Top-1 accuracy on the first ``clips`` clips of ``split`` (the last frame's prediction of each clip).

    ``model_or_runner``: a PyTorch model (``streamed=False``: clip forward; ``True``: ``step`` frame by frame) or an
    exported artifact's runner (anything with ``.run(feeds) -> outputs``; its ``spec`` is ``spec`` or
    ``runner.spec``; always stepped as the artifact's form says). ``preprocessing``: the manifest's (default:
    RGB [0, 1]). ``transform`` edits every clip's uint8 frames ``[T, H, W, 3]`` first (e.g. shuffle or reverse them)
    and ``labels_map`` maps the true labels (e.g. `motion.REVERSED` for reversed clips). ``data``: clips and labels
    from `eval_clips` to reuse (then ``split``, ``clips``, ``seed`` and ``frames`` are not used).
    """
    pre = preprocessing or Preprocess(size=(motion.SIZE, motion.SIZE))
    if data is None:
        size = int(getattr(model_or_runner, "input_size", 0)) or (spec or model_or_runner.spec).inputs[0].shape[-1]
        data = eval_clips(split=split, clips=clips, seed=seed, frames=frames, size=size)
    clips_u8, labels = data
    if transform is not None:
        clips_u8 = np.stack([transform(c) for c in clips_u8])
    if labels_map is not None:
        labels = np.asarray([labels_map[int(y)] for y in labels])
    preds = []
    if _is_module(model_or_runner):
        model = model_or_runner.eval()
        for i in range(0, len(clips_u8), batch_size):
            x = torch.stack([preprocess(c, pre) for c in clips_u8[i:i + batch_size]]).transpose(1, 2)
            preds.append(module_logits(model, x, streamed=streamed).argmax(1).numpy())
    else:
        io = spec or model_or_runner.spec
        for clip in clips_u8:
            preds.append(np.array([int(np.argmax(runner_logits(model_or_runner.run, io, preprocess(clip, pre))))]))
    return float(np.mean(np.concatenate(preds) == labels))


# ---- command line -------------------------------------------------------------------------------------------------

def _evaluate_bundles(bundles: Sequence[str], *, clips: int) -> int:
    from stexport.streaming import load_bundle_runner

    for bundle in bundles:
        runner, spec, pre = load_bundle_runner(bundle)
        t0 = time.perf_counter()
        acc = evaluate(runner, spec=spec, preprocessing=pre, clips=clips)
        print(json.dumps({"bundle": str(bundle), "split": "test", "clips": clips, "top1": acc,
                          "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stexport.motion7.train",
                                description="Train a motion7 model from scratch (reproducible) and evaluate it; "
                                            "or score exported bundles (--evaluate).")
    p.add_argument("--model", "-m", help=f"one of {', '.join([*TRAINED, *TRAINED.values()])}")
    p.add_argument("--out", "-o", default="runs", help="folder for <name>.pt and <name>.json")
    recipe = "default: the model's recipe (stexport.motion7.train.RECIPES)"
    p.add_argument("--epochs", type=int, help=recipe)
    p.add_argument("--steps-per-epoch", type=int, help=recipe)
    p.add_argument("--batch-size", type=int, help=recipe)
    p.add_argument("--lr", type=float, help=recipe)
    p.add_argument("--seed", type=int, help=recipe)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--frame-loss-from", type=int,
                   help="average the loss over the causal logits of frames t..T-1 (" + recipe + ")")
    p.add_argument("--test-clips", type=int, default=motion.TEST_CLIPS)
    p.add_argument("--evaluate", nargs="+", metavar="BUNDLE",
                   help="score exported bundle folders (<out>/<model>/<target>/) on the test split instead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate:
        return _evaluate_bundles(args.evaluate, clips=args.test_clips)
    if not args.model or resolve(args.model) not in TRAINED.values():
        p.error(f"--model must be one of {', '.join([*TRAINED, *TRAINED.values()])}")
    name = resolve(args.model)
    model, record = train(name, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads,
                          frame_loss_from=args.frame_loss_from)
    record["command"] = "python -m stexport.motion7.train " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    record["test"] = {"split": "test", "clips": args.test_clips, "data_seed": motion.DEFAULT_SEED,
                      "top1_clip": evaluate(model, clips=args.test_clips),
                      "top1_streamed": evaluate(model, clips=args.test_clips, streamed=True)}
    record["eval_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).clone() if v.is_floating_point() else v.clone()
             for k, v in model.state_dict().items()}
    torch.save(state, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["test"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
