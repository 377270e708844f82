"""MoViNet building blocks with the parameter names of Atze00/MoViNet-pytorch.

Each block has two paths over the same weights:

* ``forward`` (clip, ``[N, C, T, H, W]``): the reference, written like the port. ``conv_type="3d"`` uses Conv3d with
  symmetric temporal zero padding (base models); ``"2plus1d"`` runs the spatial Conv2d per frame and, for temporal
  kernels ``kt > 1``, a depthwise ``(kt, 1)`` Conv2d over ``[N, C, T, H*W]`` with causal (front) zero padding.
* ``step`` (``F`` consecutive frames of each stream, default one; 4D only; stream models): channels-last
  ``[N*F, H, W, C]`` tensors (frame-major) throughout, the layout of XNNPACK, LiteRT and the mobile GPU delegates,
  so an exported step graph carries no layout transposes. Eval-mode BatchNorm, the ReZero ``alpha`` and the
  hard-sigmoid affine are folded into the weights (non-persistent ``fused_*`` buffers, rebuilt by
  ``MoViNetStream.refold``). A causal temporal conv keeps its last ``kt - 1`` input frames stacked along the height
  axis, ``buf [N, (kt-1)*H, W, C]`` (oldest first), and runs as one depthwise ``(kt, 1)`` conv with dilation
  ``(H, 1)`` over ``cat([buf, x], dim=1)`` (the F new frames stacked the same way): 4 ops, no reshapes for F=1.

All spatial padding is TensorFlow "SAME" (``tf_like=True`` in the port, the only mode of the released weights),
computed from static shapes and applied with ``F.pad`` (or the conv's own padding when symmetric).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._movinet_config import BlockSpec, same_out, same_pads

BN_EPS = 1e-3
Act = Literal["none", "swish", "hardswish"]
Gate = Literal["sigmoid", "hardsigmoid"]
ConvType = Literal["3d", "2plus1d"]


def is_tracing() -> bool:
    """True inside torch.jit.trace / torch.export / torch.compile / torch.fx tracing (no eager-only tricks)."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
                or torch.fx._symbolic_trace._is_fx_tracing_flag)


def _zero_cat(x: Tensor, dim: int, before: int, after: int) -> Tensor:
    """``x`` zero-padded along ``dim`` by concatenating zeros (exact in any quantization: 0 is a grid point)."""
    if not before and not after:
        return x

    def zeros(k: int) -> list[Tensor]:
        return [x.new_zeros([k if d == dim else n for d, n in enumerate(x.shape)])] if k else []

    parts = [*zeros(before), x, *zeros(after)]
    return torch.cat(parts, dim)


class StepLayout:
    """How ``step``'s 4D graph is written for a runtime: where the channels are, and which op forms it uses.

    ``"nhwc"`` (``[N, H, W, C]``): LiteRT's own layout, whose converter cancels the permutes around each conv, so the
    graph has no layout transposes. ``"nchw"`` (``[N, C, H, W]``): PyTorch's, for runtimes that take NCHW graphs and
    convert once inside (ExecuTorch's XNNPACK partitioner, ONNX Runtime, Core ML): there the permutes of the NHWC
    form would run as real transposes. Frames in a causal-conv buffer stack along H in both.

    ``integer=True`` writes the step with ops that integer (int8) kernels run, for full-integer exports: hard-swish
    as ``relu6(x + 3) * x / 6`` for LiteRT and ONNX Runtime (see `act`), spatial means as MEAN, and the strided
    residual average pool as a depthwise conv; for ExecuTorch (integer NCHW), zero pads as concatenations, so that
    its XNNPACK delegate keeps them in int8 (`pad`). The float form keeps the single fused ops."""

    def __init__(self, name: str, *, integer: bool = False) -> None:
        if name not in ("nhwc", "nchw"):
            raise ValueError(f"step layout must be 'nhwc' or 'nchw', got {name!r}")
        self.name, self.channels_last, self.integer = name, name == "nhwc", integer
        self.h_axis = 1 if self.channels_last else 2
        self.buffer_layout = "N(T*H)WC" if self.channels_last else "NC(T*H)W"

    def __repr__(self) -> str:
        return f"StepLayout({self.name!r}, integer={self.integer})"

    def _executorch_int8(self) -> bool:
        """The integer NCHW form as ExecuTorch's XNNPACK delegate runs it (ONNX exports keep the plain ops)."""
        return self.integer and not self.channels_last and not torch.onnx.is_in_onnx_export()

    def from_nchw(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1) if self.channels_last else x

    def frame(self, x: Tensor) -> Tensor:
        """The input frame ``[N, 3, H, W]`` in this layout. ExecuTorch int8: copied to channels-last memory first,
        so that its XNNPACK delegate transposes it in float32 before quantizing it (a 3-channel int8 transpose took
        0.076 ms of A0's step, the float32 one 0.047)."""
        if self._executorch_int8():
            return torch.ops.aten._to_copy.default(x, memory_format=torch.channels_last)
        return self.from_nchw(x)

    def hw(self, x: Tensor) -> tuple[int, int]:
        return (int(x.shape[1]), int(x.shape[2])) if self.channels_last else (int(x.shape[2]), int(x.shape[3]))

    def channels(self, x: Tensor) -> int:
        return int(x.shape[3]) if self.channels_last else int(x.shape[1])

    def buffer_shape(self, rows: int, w: int, c: int) -> tuple[int, int, int]:
        """A buffer of ``rows`` stacked frame rows, without batch."""
        return (rows, w, c) if self.channels_last else (c, rows, w)

    def conv(self, x: Tensor, w: Tensor, b: Tensor, *, stride: int = 1, padding: tuple[int, int] = (0, 0),
             dilation: tuple[int, int] = (1, 1), groups: int = 1) -> Tensor:
        """``F.conv2d`` (NCHW weights) in this layout; for NHWC the two permutes are free views in eager mode and
        cancel against LiteRT's own layout transposes."""
        if not self.channels_last:
            return F.conv2d(x, w, b, stride, padding, dilation, groups)
        return F.conv2d(x.permute(0, 3, 1, 2), w, b, stride, padding, dilation, groups).permute(0, 2, 3, 1)

    def pad(self, x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
        """Zero-pad H and W by ``(left, right, top, bottom)``."""
        if not any(pads):
            return x
        pl, pr, pt, pb = pads
        if self.channels_last:
            return F.pad(x, (0, 0, pl, pr, pt, pb))
        if self._executorch_int8():
            # NCHW int8 (ExecuTorch): its XNNPACK delegate pads float32 only (a pad between int8 ops left it and
            # its producer in float32, with a dequantize and quantize around them), but concatenates int8
            return _zero_cat(_zero_cat(x, 3, pl, pr), 2, pt, pb)
        return F.pad(x, pads)

    def avg_pool(self, x: Tensor, kernel: int | tuple[int, int], stride: int | None = None, *,
                 padding: int | tuple[int, int] = 0, ceil_mode: bool = False, count_include_pad: bool = True
                 ) -> Tensor:
        if not self.channels_last:
            return F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)
        y = F.avg_pool2d(x.permute(0, 3, 1, 2), kernel, stride, padding, ceil_mode, count_include_pad)
        return y.permute(0, 2, 3, 1)

    @property
    def hardswish_gain(self) -> float:
        """What this form's hard-swish outputs are off by where the model folds the rest into the weights that
        read them (`act`): `HARDSWISH_GAIN` in the integer NHWC form (LiteRT), 1 elsewhere."""
        return HARDSWISH_GAIN if self.integer and self.channels_last else 1.0

    def act(self, x: Tensor, kind: Act, *, gain: float = 1.0) -> Tensor:
        """`activation` in this step form. Integer forms: ExecuTorch's XNNPACK delegate runs hard-swish in int8 as
        one op (a table lookup; `stexport.targets._executorch_quant` quantizes it); LiteRT's and ONNX Runtime's
        int8 kernels have none, so there it is ``relu6(x + 3) * x / 6`` (three int8 elementwise ops, written so
        that the TFLite converter does not fuse them back into a float HARD_SWISH; the ONNX int8 export folds the
        ``/ 6`` into its readers' quantization scale itself).

        ``gain`` = `hardswish_gain` (the integer NHWC form): ``relu6(x + 3) * x``, six times the hard-swish, whose
        ``/ 6`` the model has folded into the weights that read it: one int8 pass fewer."""
        if gain != 1.0 and not (kind == "hardswish" and gain == self.hardswish_gain):
            raise ValueError(f"an activation gain of {gain} exists only for the integer NHWC hard-swish")
        if kind == "hardswish" and self.integer and not self._executorch_int8():
            y = F.relu6(x + 3.0) * x
            return y if gain == HARDSWISH_GAIN else y * (1.0 / 6.0)
        return activation(x, kind)

    def spatial_mean(self, x: Tensor) -> Tensor:
        """``[N, C]``. Float: a whole-frame average pool, the one form that LiteRT (channels-last, no transposes)
        and ExecuTorch's XNNPACK partitioner both take in full (ONNX gets a plain ReduceMean). Integer: MEAN, which
        XNNPACK runs in int8 (its average pool is float only)."""
        dims = (1, 2) if self.channels_last else (2, 3)
        if self._executorch_int8():
            # NCHW (ExecuTorch): keepdim, the form its XNNPACK partitioner takes (else a portable float kernel);
            # NHWC (LiteRT) keeps the plain MEAN, which its int8 delegate runs
            return x.mean(dims, keepdim=True).flatten(1)
        if self.integer or torch.onnx.is_in_onnx_export():
            return x.mean(dims)
        return self.avg_pool(x, self.hw(x)).flatten(1)

    def per_channel(self, g: Tensor) -> Tensor:
        """``[N, C]`` -> broadcastable against a frame tensor."""
        return g.reshape(g.shape[0], 1, 1, g.shape[1]) if self.channels_last else g.reshape(*g.shape, 1, 1)

    def stack(self, y: Tensor, frames: int) -> Tensor:
        """``[N*F, ..]`` frames -> one tensor per stream with the F frames stacked along H (oldest first)."""
        if frames == 1:
            return y
        if self.channels_last:
            _, h, w, c = y.shape
            return y.reshape(-1, frames * h, w, c)
        _, c, h, w = y.shape
        return y.reshape(-1, frames, c, h * w).permute(0, 2, 1, 3).reshape(-1, c, frames * h, w)

    def unstack(self, z: Tensor, frames: int, h: int) -> Tensor:
        """The inverse of `stack` for frames of height ``h``."""
        if frames == 1:
            return z
        if self.channels_last:
            _, _, w, c = z.shape
            return z.reshape(-1, h, w, c)
        _, c, _, w = z.shape
        return z.reshape(-1, c, frames, h * w).permute(0, 2, 1, 3).reshape(-1, c, h, w)

    def rows_from(self, z: Tensor, start: int) -> Tensor:
        return z[:, start:] if self.channels_last else z[:, :, start:]


NHWC, NCHW = StepLayout("nhwc"), StepLayout("nchw")
#: what an integer step's hard-swish outputs are off by where their consumers fold the ``/ 6`` in (`StepLayout.act`)
HARDSWISH_GAIN = 6.0


def activation(x: Tensor, kind: Act) -> Tensor:
    """``swish`` = x * sigmoid(x) (the port's Swish), ``hardswish`` = torch's Hardswish, ``none`` = identity."""
    if kind == "swish":
        return F.silu(x)
    if kind == "hardswish":
        return F.hardswish(x)
    return x


def port_hardsigmoid(x: Tensor) -> Tensor:
    """The port's (and TF's) hard sigmoid ``clamp(0.2 * x + 0.5, 0, 1)`` (not ``F.hardsigmoid`` = x/6 + 0.5)."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor`` (at least ``divisor``), never more than 10% below ``value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


def running_mean(s: Tensor, mean: Tensor, r: Tensor, *, frames: int = 1, saturating: bool = False,
                 apart: bool = False) -> tuple[Tensor, Tensor]:
    """The cumulative pool of ``step``: ``s [N*F, C]`` per-frame values of F consecutive frames (frame-major),
    ``mean [N, C]`` over the frames before, ``r [N*F, 1]`` = 1 / count at each frame -> (the mean at each frame
    ``[N*F, C]``, the mean after the last frame ``[N, C]``). Each frame: ``m += (s - m) * r``. For F > 1 and a
    count that only grows, that is a running sum (written as prefix means, below); a count ``saturating`` at a window
    runs the recurrence per frame.

    ``apart`` (F = 1): the first result is the same values computed by other ops, so that what reads it does not
    read the state output (an int8 op reading a graph output must stay float in LiteRT, see `_tflite_quant`). It is
    computed first, so that every read of ``mean`` comes before the op that writes the new mean (ExecuTorch then
    feeds the state output back in place, `stexport.targets._executorch.states_read_before_written`)."""
    if frames == 1:
        first = mean - (mean - s) * r if apart else None  # bit-identical to m: a - (-d) == a + d in IEEE
        m = mean + (s - mean) * r  # (not torch.lerp: exporters expand it into ~8 ops)
        return (m if first is None else first), m
    c = s.shape[1]
    s3, r3 = s.reshape(-1, frames, c), r.reshape(-1, frames, 1)
    if saturating:
        out, m = [], mean
        for f in range(frames):
            m = m + (s3[:, f] - m) * r3[:, f]
            out.append(m)
        m3 = torch.stack(out, 1)
    else:
        # m_t = mean + r_t * sum_{j<=t} (s_j - mean), the sum as prefix means (one fully connected layer over the
        # frame axis with constant weights) times (t + 1) * r_t: its output keeps the range of s, where a cumsum's
        # grows with t (an int8 export quantizes that output per tensor; LiteRT's XNNPACK runs no CUMSUM)
        t1 = torch.tensor([float(t + 1) for t in range(frames)], dtype=s.dtype, device=s.device)
        prefix_mean = torch.tensor([[1.0 / (t + 1) if j <= t else 0.0 for j in range(frames)]
                                    for t in range(frames)], dtype=s.dtype, device=s.device)
        p = F.linear((s3 - mean[:, None]).transpose(1, 2), prefix_mean).transpose(1, 2)
        m3 = mean[:, None] + p * (t1[:, None] * r3)
    return m3.reshape(-1, c), m3[:, -1]


def cumulative_mean(x: Tensor, *, window: int | None = None) -> Tensor:
    """Causal mean over time (dim 2) of ``x [N, C, T, ...]``: frame t holds the mean of frames 0..t.

    With ``window`` W the frame count saturates at W: from frame W on, ``m_t = m_{t-1} + (x_t - m_{t-1}) / W``
    (an exponential moving average with horizon W), exactly what ``step`` computes.
    """
    t = x.shape[2]
    counts = torch.arange(1, t + 1, dtype=x.dtype, device=x.device).reshape(1, 1, t, *([1] * (x.dim() - 3)))
    if window is None or t <= window:
        return torch.cumsum(x, 2) / counts
    out = [torch.cumsum(x[:, :, :window], 2) / counts[:, :, :window]]
    m = out[0][:, :, -1:]
    for i in range(window, t):
        m = m + (x[:, :, i:i + 1] - m) / window
        out.append(m)
    return torch.cat(out, 2)


class ConvUnit(nn.Module):
    """One convolution and its BatchNorm (eps 1e-3): keys ``conv3d.*`` or ``conv2d.*``, then ``norm.*``."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, ...], *, stride: tuple[int, ...],
                 padding: tuple[int, ...] | int = 0, groups: int = 1, bias: bool = False, norm: bool = True) -> None:
        super().__init__()
        dims = len(kernel)
        self.conv_name = f"conv{dims}d"
        conv: nn.Module = (nn.Conv3d if dims == 3 else nn.Conv2d)(
            cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=bias)  # type: ignore[arg-type]
        self.add_module(self.conv_name, conv)
        self.norm: nn.Module | None = None
        if norm:
            self.norm = (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(cout, eps=BN_EPS)
        #: a Conv3d written as one conv2d per temporal tap (`_conv3d_by_taps`; LiteRT's form)
        self.conv3d_by_taps = False

    @property
    def conv(self) -> nn.Conv2d | nn.Conv3d:
        conv: nn.Conv2d | nn.Conv3d = getattr(self, self.conv_name)
        return conv

    def forward(self, x: Tensor) -> Tensor:
        x = self._conv3d_by_taps(x) if self.conv3d_by_taps else self.conv(x)
        return x if self.norm is None else self.norm(x)

    def _conv3d_by_taps(self, x: Tensor) -> Tensor:
        """The Conv3d (unpadded, stride 1 in time) of ``x [N, C, T + kt - 1, H, W]`` as the sum over its ``kt``
        temporal taps of a conv2d of the frames that tap reads: ``[N, Cout, T, H', W']``, the same numbers. LiteRT
        has no grouped CONV_3D (its converter asks for TF Select ops), and XNNPACK runs no CONV_3D at all."""
        conv = self.conv
        n, c, tp, h, w = x.shape
        kt = conv.kernel_size[0]
        t = tp - kt + 1
        frames = x.transpose(1, 2)  # [N, T + kt - 1, C, H, W]
        taps = [F.conv2d(frames[:, k:k + t].reshape(n * t, c, h, w), conv.weight[:, :, k], stride=conv.stride[1:],
                         groups=conv.groups) for k in range(kt)]
        y = taps[0]
        for tap in taps[1:]:
            y = y + tap
        y = y.reshape(n, t, *y.shape[1:]).transpose(1, 2)
        return y if conv.bias is None else y + conv.bias.reshape(1, -1, 1, 1, 1)

    def folded(self) -> tuple[Tensor, Tensor]:
        """Weight and bias (float64) of the conv with the eval-mode BatchNorm folded in."""
        conv = self.conv
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(w.shape[0])
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            bn = self.norm
            assert bn.running_var is not None and bn.running_mean is not None
            g = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w = w * g.reshape(-1, *([1] * (w.dim() - 1)))
            b = (b - bn.running_mean.double()) * g + bn.bias.detach().double()
        return w, b


class ConvBlock(nn.Module):
    """The port's ``ConvBlock3D``: ``conv_1`` (3D, or spatial 2D) [+ ``conv_2``, depthwise temporal ``(kt, 1)``],
    each followed by BatchNorm and ``act``. TF-"same" spatial padding."""

    fused_w1: Tensor
    fused_b1: Tensor
    fused_w2: Tensor
    fused_b2: Tensor

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], *, conv_type: ConvType, causal: bool,
                 stride: int = 1, groups: int = 1, act: Act = "none", norm: bool = True, bias: bool = False) -> None:
        super().__init__()
        kt, kh, kw = kernel
        if kt % 2 == 0:
            raise ValueError(f"temporal kernel {kt} must be odd (TF-like padding)")
        self.kernel, self.stride, self.groups, self.act = kernel, stride, groups, act
        self.conv_type, self.causal = conv_type, causal
        self.conv_2: ConvUnit | None = None
        if conv_type == "3d":
            if causal and kt > 1:
                raise NotImplementedError("causal 3D convolutions are not used by any released MoViNet; use 2plus1d")
            # the temporal padding is in ``forward``'s one explicit pad (with the spatial one): LiteRT's converter
            # crashes (SIGSEGV in its FuseSamePaddingConv3D) on a pad feeding a CONV_3D that pads as well
            self.conv_1 = ConvUnit(cin, cout, kernel, stride=(1, stride, stride), groups=groups, bias=bias,
                                   norm=norm)
        elif conv_type == "2plus1d":
            self.conv_1 = ConvUnit(cin, cout, (kh, kw), stride=(stride, stride), groups=groups, bias=bias, norm=norm)
            if kt > 1:
                self.conv_2 = ConvUnit(cin, cout, (kt, 1), stride=(1, 1), groups=groups, bias=bias, norm=norm)
        else:
            raise ValueError(f"conv_type must be '3d' or '2plus1d', got {conv_type!r}")
        for name in ("fused_w1", "fused_b1", "fused_w2", "fused_b2"):
            self.register_buffer(name, None, persistent=False)
        self.gain = 1.0  # what ``step``'s activations are off by (`refold`)

    def _pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        """TF-"same" padding of ``conv_1`` for an ``h x w`` input, as ``F.pad`` wants it: (left, right, top, bottom)."""
        (pt, pb), (pl, pr) = same_pads(h, self.kernel[1], self.stride), same_pads(w, self.kernel[2], self.stride)
        return pl, pr, pt, pb

    # -- clip path -----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """``x [N, Cin, T, H, W]`` -> ``[N, Cout, T, H', W']``."""
        pads: tuple[int, ...] = self._pads(x.shape[-2], x.shape[-1])
        if self.conv_type == "3d":
            pads += ((self.kernel[0] - 1) // 2,) * 2  # (front, back): non-causal, centred
        if any(pads):
            x = F.pad(x, pads)
        if self.conv_type == "3d":
            return activation(self.conv_1(x), self.act)
        n, c, t, h, w = x.shape
        y = activation(self.conv_1(x.transpose(1, 2).reshape(n * t, c, h, w)), self.act)
        _, co, ho, wo = y.shape
        y = y.reshape(n, t, co, ho, wo).transpose(1, 2)
        if self.conv_2 is None:
            return y
        kt = self.kernel[0]
        front, back = (kt - 1, 0) if self.causal else ((kt - 1) // 2, (kt - 1) // 2)
        y = F.pad(y.reshape(n, co, t, ho * wo), (0, 0, front, back))
        return activation(self.conv_2(y), self.act).reshape(n, co, t, ho, wo)

    # -- frame path (folded weights, 4D) ---------------------------------------------------------------------------
    def refold(self, *, scale: Tensor | float = 1.0, shift: float = 0.0, in_scale: float = 1.0, gain: float = 1.0
               ) -> None:
        """Rebuild ``fused_*``: BatchNorm folded; the last conv's output mapped to ``scale * y + shift``; the first
        conv takes its input multiplied by ``in_scale`` (folded into its weight). ``gain``: ``step``'s activations
        come out ``gain`` times too large (`StepLayout.act`); ``conv_2`` folds that out of its input, and what
        reads this block's output must too."""
        self.gain = gain
        w1, b1 = self.conv_1.folded()
        w1 = w1 * in_scale
        dtype = self.conv_1.conv.weight.dtype
        if self.conv_2 is None:
            w1, b1 = w1 * scale, b1 * scale + shift
        else:
            w2, b2 = self.conv_2.folded()
            w2 = w2 / gain
            self.fused_w2, self.fused_b2 = (w2 * scale).to(dtype), (b2 * scale + shift).to(dtype)
        self.fused_w1, self.fused_b1 = w1.to(dtype), b1.to(dtype)

    def step(self, x: Tensor, buf: Tensor | None = None, *, frames: int = 1, layout: StepLayout = NHWC
             ) -> tuple[Tensor, Tensor | None]:
        """``x [N*F, H, W, Cin]`` (F consecutive frames of each stream, frame-major; NHWC shown, or ``layout``)
        -> ``([N*F, H', W', Cout], new buf)``; ``buf [N, (kt-1)*H', W', Cout]`` holds the previous ``kt - 1``
        outputs of ``conv_1`` stacked along H (oldest first), or is None when ``kt == 1``."""
        pads = self._pads(*layout.hw(x))
        pl, pr, pt, pb = pads
        pad = (pt, pl)
        if pl != pr or pt != pb:
            x, pad = layout.pad(x, pads), (0, 0)
        y = layout.act(layout.conv(x, self.fused_w1, self.fused_b1, stride=self.stride, padding=pad,
                               groups=self.groups), self.act, gain=self.gain)
        if self.conv_2 is None:
            return y, None
        assert buf is not None
        h = layout.hw(y)[0]
        z = torch.cat([buf, layout.stack(y, frames)], layout.h_axis)
        out = layout.conv(z, self.fused_w2, self.fused_b2, dilation=(h, 1), groups=self.groups)
        return layout.unstack(layout.act(out, self.act, gain=self.gain), frames, h), layout.rows_from(z, frames * h)


class TfAvgPool(nn.Module):
    """3x3 stride-2 spatial average pooling, TF-"same" padding excluded from the average (the port's
    ``tfAvgPool3D``, generalised to non-square frames): zero pad, average, times ``9 / valid count``."""

    corr: Tensor | None

    def __init__(self, in_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.in_size = in_size
        self.register_buffer("corr", None if in_size is None else self.correction(*in_size), persistent=False)

    @staticmethod
    def correction(h: int, w: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
        """``[1, 1, ceil(h/2), ceil(w/2)]``: 9 / (number of non-padding pixels under each window)."""
        def counts(size: int) -> list[int]:
            before = same_pads(size, 3, 2)[0]
            return [min(2 * i - before + 3, size) - max(2 * i - before, 0) for i in range(same_out(size, 2))]
        rows = torch.tensor(counts(h), dtype=torch.float64)
        cols = torch.tensor(counts(w), dtype=torch.float64)
        return (9.0 / (rows[:, None] * cols[None, :]))[None, None].to(dtype=dtype, device=device)

    def _corr(self, h: int, w: int, x: Tensor) -> Tensor:
        """The correction for ``h x w`` inputs, in ``x``'s dtype and device (the cached one is for ``in_size``:
        another input size with the same output size, e.g. 4x3 and 4x4, has other counts)."""
        corr = self.corr
        if corr is None or self.in_size != (h, w) or corr.dtype != x.dtype:
            corr = self.correction(h, w, x.dtype, x.device)
        return corr

    @staticmethod
    def _pads(h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) TF-"same" pads of an ``h x w`` input."""
        (pt, pb), (pl, pr) = same_pads(h, 3, 2), same_pads(w, 3, 2)
        return pl, pr, pt, pb

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, T, H, W]`` -> ``[N, C, T, ceil(H/2), ceil(W/2)]`` (a 2D pool over ``[N, C*T, H, W]``: every
        runtime has one, ExecuTorch's portable kernels have no 3D pool)."""
        n, c, t, h, w = x.shape
        y = F.avg_pool2d(F.pad(x.reshape(n, c * t, h, w), self._pads(h, w)), 3, 2)
        return (y * self._corr(h, w, x)).reshape(n, c, t, y.shape[-2], y.shape[-1])

    def step(self, x: Tensor, *, layout: StepLayout = NHWC) -> Tensor:
        """``[N, H, W, C]`` -> ``[N, ceil(H/2), ceil(W/2), C]`` (or NCHW, ``layout``). LiteRT (float NHWC): one
        average pool that excludes the padding from the count, written so that it converts to TFLite's SAME pool
        (TF-"same" pads before by ``p`` in {0, 1} and after by 1: torch's ``padding=p`` with ``ceil_mode``). Others:
        zero pad, average, rescale by the valid count (3 ops that every delegate runs); integer: the average as a
        depthwise conv (XNNPACK's average pool is float only)."""
        h, w = layout.hw(x)
        pads = self._pads(h, w)
        if layout.integer:
            c = layout.channels(x)
            weight = x.new_full((c, 1, 3, 3), 1.0 / 9.0)
            y = layout.conv(layout.pad(x, pads), weight, x.new_zeros(c), stride=2, groups=c)
        elif layout.channels_last:
            return layout.avg_pool(x, 3, 2, padding=(pads[2], pads[0]), ceil_mode=True, count_include_pad=False)
        else:
            y = layout.avg_pool(layout.pad(x, pads), 3, 2)
        return y * layout.from_nchw(self._corr(h, w, x))


class SqueezeExcite(nn.Module):
    """The port's ``SqueezeExcitation``. Causal: the squeeze is ``cat(cumulative mean over frames, this frame's
    spatial mean)`` (2C channels; no positional encoding, as in the port); otherwise the global mean."""

    fused_w1: Tensor
    fused_b1: Tensor
    fused_w2: Tensor
    fused_b2: Tensor

    def __init__(self, channels: int, *, conv_type: ConvType, causal: bool, act: Act, gate: Gate,
                 pool_window: int | None = None) -> None:
        super().__init__()
        mult = 2 if causal else 1
        squeeze = make_divisible(channels // 4 * mult, 8)
        self.causal, self.act, self.gate, self.pool_window = causal, act, gate, pool_window
        kw = dict(conv_type=conv_type, causal=causal, norm=False, bias=True)
        self.fc1 = ConvBlock(channels * mult, squeeze, (1, 1, 1), **kw)  # type: ignore[arg-type]
        self.fc2 = ConvBlock(squeeze, channels, (1, 1, 1), **kw)  # type: ignore[arg-type]
        for name in ("fused_w1", "fused_b1", "fused_w2", "fused_b2"):
            self.register_buffer(name, None, persistent=False)

    def _gate(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x) if self.gate == "sigmoid" else port_hardsigmoid(x)

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, C, T, H, W]`` -> ``x * gate``."""
        if self.causal:
            s = x.mean((3, 4), keepdim=True)
            z = torch.cat([cumulative_mean(s, window=self.pool_window), s], 1)
        else:
            z = x.mean((2, 3, 4), keepdim=True)
        return x * self._gate(self.fc2(activation(self.fc1(z), self.act)))

    @property
    def out_scale(self) -> float:
        """What ``step``'s output is off by, for the next conv to fold in: the hard-sigmoid gate runs as
        ``relu6(6 * (0.2 * y + 0.5))`` (one fused FULLY_CONNECTED + RELU6 in TFLite), i.e. 6x the gate."""
        return 1.0 / 6.0 if self.gate == "hardsigmoid" else 1.0

    def refold(self, *, in_scale: float = 1.0) -> None:
        """Rebuild ``fused_*`` as 2D linear weights; for the hard sigmoid, fc2 absorbs ``6 * (0.2 * y + 0.5)``;
        fc1 takes the squeeze of an input multiplied by ``in_scale``."""
        w1, b1 = self.fc1.conv_1.folded()
        w1 = w1 * in_scale
        w2, b2 = self.fc2.conv_1.folded()
        if self.gate == "hardsigmoid":
            w2, b2 = 1.2 * w2, 1.2 * b2 + 3.0
        dtype = self.fc1.conv_1.conv.weight.dtype
        self.fused_w1, self.fused_b1 = w1.flatten(1).to(dtype), b1.to(dtype)
        self.fused_w2, self.fused_b2 = w2.flatten(1).to(dtype), b2.to(dtype)

    def step(self, x: Tensor, mean: Tensor, r: Tensor, *, frames: int = 1, layout: StepLayout = NHWC
             ) -> tuple[Tensor, Tensor]:
        """``x [N*F, H, W, C]`` (F frames, see `ConvBlock.step`), running mean ``[N, C]`` of past frames' spatial
        means, ``r = 1 / count [N*F, 1]`` -> (``x * gate / out_scale``, updated mean; see `running_mean`)."""
        s = layout.spatial_mean(x)
        m, last = running_mean(s, mean, r, frames=frames, saturating=self.pool_window is not None)
        g = layout.act(F.linear(torch.cat([m, s], 1), self.fused_w1, self.fused_b1), self.act)
        g = F.linear(g, self.fused_w2, self.fused_b2)
        g = F.relu6(g) if self.gate == "hardsigmoid" else torch.sigmoid(g)
        return x * layout.per_channel(g), last


class Bneck(nn.Module):
    """The port's ``BasicBneck``: ``res + alpha * project(se(deep(expand(x))))`` (ReZero ``alpha``); the
    residual is identity, or [TF avg-pool when strided +] 1x1 conv + BN."""

    def __init__(self, spec: BlockSpec, *, conv_type: ConvType, causal: bool, in_size: tuple[int, int] | None = None,
                 pool_window: int | None = None) -> None:
        super().__init__()
        act: Act = "swish" if conv_type == "3d" else "hardswish"
        self.alpha = nn.Parameter(torch.zeros(()))
        kw = dict(conv_type=conv_type, causal=causal)
        self.expand = None
        if spec.expanded != spec.cout:  # the port's condition
            self.expand = ConvBlock(spec.cin, spec.expanded, (1, 1, 1), act=act, **kw)  # type: ignore[arg-type]
        self.deep = ConvBlock(spec.expanded, spec.expanded, spec.kernel, stride=spec.stride, groups=spec.expanded,
                              act=act, **kw)  # type: ignore[arg-type]
        self.se = SqueezeExcite(spec.expanded, act=act, gate="sigmoid" if conv_type == "3d" else "hardsigmoid",
                                pool_window=pool_window, **kw)  # type: ignore[arg-type]
        self.project = ConvBlock(spec.expanded, spec.cout, (1, 1, 1), **kw)  # type: ignore[arg-type]
        self.res: nn.Sequential | None = None
        if spec.stride != 1 or spec.cin != spec.cout:
            layers: list[nn.Module] = [TfAvgPool(in_size)] if spec.stride != 1 else []
            layers.append(ConvBlock(spec.cin, spec.cout, (1, 1, 1), **kw))  # type: ignore[arg-type]
            self.res = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, Cin, T, H, W]`` -> ``[N, Cout, T, H', W']``."""
        res = x if self.res is None else self.res(x)
        h = x if self.expand is None else self.expand(x)
        return res + self.alpha * self.project(self.se(self.deep(h)))

    def refold(self, *, act_gain: float = 1.0) -> None:
        """``act_gain``: the gain of the expand and deep activations (`ConvBlock.refold`), folded out of what reads
        them: the deep conv, the squeeze-excite and the projection (its running mean state carries the gain)."""
        for m in self.res or ():
            if isinstance(m, ConvBlock):
                m.refold()
        if self.expand is not None:
            self.expand.refold(gain=act_gain)
        self.deep.refold(in_scale=1.0 if self.expand is None else 1.0 / act_gain, gain=act_gain)
        self.se.refold(in_scale=1.0 / act_gain)
        self.project.refold(scale=self.alpha.detach().double(), in_scale=self.se.out_scale / act_gain)

    def step(self, x: Tensor, buf: Tensor | None, mean: Tensor, r: Tensor, *, frames: int = 1,
             layout: StepLayout = NHWC) -> tuple[Tensor, Tensor | None, Tensor]:
        """F frames ``[N*F, H, W, Cin]`` (or NCHW) -> (``[N*F, H', W', Cout]``, new deep buffer, new SE mean)."""
        res = x
        for layer in self.res or ():
            if isinstance(layer, TfAvgPool):
                res = layer.step(res, layout=layout)
            elif isinstance(layer, ConvBlock):
                res = layer.step(res, layout=layout)[0]
        h = x if self.expand is None else self.expand.step(x, layout=layout)[0]
        h, buf = self.deep.step(h, buf, frames=frames, layout=layout)
        h, mean = self.se.step(h, mean, r, frames=frames, layout=layout)
        return res + self.project.step(h, layout=layout)[0], buf, mean
