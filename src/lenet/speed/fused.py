"""Faster forms of a LeNet's forward pass for channels-last CPU training: the same
function of the same parameters, computed another way (equal up to float rounding).

Three rewrites, each used where the architecture allows it (``fused_forward``); what
each gives, and how to measure it, is in docs/speed.md.

1. **The first conv block by pixel phases** (PhaseBlock). conv -> activation -> 2x2/2
   average pool is computed on the input rearranged into 2x2 blocks ("space to
   depth"): a conv with 4x the input channels, a kernel of k // 2 + 1 blocks and 4x
   the output channels, one group per output phase (which of the 4 pixels of a pool
   window). oneDNN vectorises 4 input and 24 output channels, not 1 and 6. The pool
   becomes the mean of the 4 phase groups, a 1x1 conv, where PyTorch's
   avg_pool2d_backward zero-fills and scatters. The rearranging itself is one copy.
2. **The flatten in channels-last order** (FlatLinear). nn.Flatten on a channels-last
   tensor copies it to NCHW order, and the gradient comes back NCHW, so the last
   pool's backward converts layouts again. Flattening in memory order (a view) and
   permuting the first dense layer's weight to match (120x400 floats) computes the
   same products.
3. **Few-channel convs' input gradient as a transposed conv in NCHW** (FewChannelConv).

``Speed.fused_layers`` records whether a run used them (runtime.resolve_speed): a
resumed run keeps its choice, so it continues bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.network import LeNet


def phase_index(out_ch: int, in_ch: int, k: int) -> torch.Tensor:
    """Indices into ``cat(weight.flatten(), [0])`` that build the phase conv's weight
    (4 * out_ch, 4 * in_ch, K, K), K = k // 2 + 1, from a (out_ch, in_ch, k, k) one.

    Output channel (ro, so, co) is output pixel (2a + ro, 2b + so) of channel co; input
    channel (ri, si, ci) is input pixel (2u + ri, 2v + si). Block offset (du, dv) then
    meets kernel tap (2 du + ri - ro, 2 dv + si - so); taps outside the kernel point at
    the appended zero."""
    K = k // 2 + 1
    zero = out_ch * in_ch * k * k
    index = torch.full((2, 2, out_ch, 2, 2, in_ch, K, K), zero, dtype=torch.long)
    taps = torch.arange(out_ch)[:, None] * in_ch * k * k + torch.arange(in_ch) * k * k  # (co, ci) -> tap (0, 0)
    for ro in range(2):
        for so in range(2):
            for ri in range(2):
                for si in range(2):
                    for du in range(K):
                        for dv in range(K):
                            i, j = 2 * du + ri - ro, 2 * dv + si - so
                            if 0 <= i < k and 0 <= j < k:
                                index[ro, so, :, ri, si, :, du, dv] = taps + i * k + j
    return index.reshape(4 * out_ch, 4 * in_ch, K, K)


def phase_mean_weight(channels: int) -> torch.Tensor:
    """A 1x1 conv's weight (C, 4C, 1, 1) that averages the 4 phase groups of each channel:
    oneDNN runs it (and its input gradient) faster than slicing and adding in torch."""
    weight = torch.zeros(channels, 4, channels)
    weight[:, :, :] = 0.25 * torch.eye(channels)[:, None, :]
    return weight.reshape(channels, 4 * channels, 1, 1)


class PhaseBlock(nn.Module):
    """conv (stride 1) -> activation -> 2x2/2 average pool, by phases; the conv, the
    activation, the pool and their parameters are the model's own modules."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, pool: nn.AvgPool2d):
        super().__init__()
        self.conv, self.act, self.pool = conv, act, pool
        out_ch, in_ch, k, _ = conv.weight.shape
        self.k, self.pad = k, int(conv.padding[0])
        device = conv.weight.device  # built after the model moved to its device
        self.register_buffer("index", phase_index(out_ch, in_ch, k).to(device), persistent=False)
        self.register_buffer("mean", phase_mean_weight(out_ch).to(device).contiguous(memory_format=torch.channels_last),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        k, p = self.k, self.pad
        if (height + 2 * p - k + 1) % 2 or (width + 2 * p - k + 1) % 2:  # an odd size: the pool drops a row
            return self.pool(self.act(self.conv(x)))
        # Rows the blocks need: the output's, plus (K - 1) blocks of 2: one more than the
        # padding gives for an even kernel.
        extra = 2 * (k // 2) - (k - 1)
        padded = F.pad(x, (p, p + extra, p, p + extra))
        blocks = _space_to_depth(padded)
        weight = self.conv.weight
        flat = torch.cat([weight.reshape(-1), weight.new_zeros(1)])
        phase_weight = flat[self.index].contiguous(memory_format=torch.channels_last)
        bias = None if self.conv.bias is None else self.conv.bias.repeat(4)
        return F.conv2d(self.act(F.conv2d(blocks, phase_weight, bias)), self.mean)


# A whole pixel pair (si = 0, 1) of a one-channel image moves as one integer of twice
# the pixel's width: the copy then runs over 8-byte elements rather than pairs of 4.
PAIR_TYPES = {1: torch.int16, 2: torch.int32, 4: torch.int64}


def _space_to_depth(padded: torch.Tensor) -> torch.Tensor:
    """(N, C, 2h, 2w) -> channels-last (N, 4C, h, w): pixel (2u + ri, 2v + si) of channel
    c becomes channel (ri, si, c) of block (u, v), in one copy."""
    n, c, height, width = padded.shape
    hs, ws = height // 2, width // 2
    pair_type = PAIR_TYPES.get(padded.element_size())
    if c == 1 and pair_type is not None:
        pairs = padded.reshape(n, height, ws, 2).view(pair_type).reshape(n, hs, 2, ws)  # (N, u, ri, v)
        blocks = pairs.permute(0, 1, 3, 2).contiguous().view(padded.dtype)  # (N, u, v, ri * 2 + si)
        return blocks.reshape(n, hs, ws, 4).permute(0, 3, 1, 2)
    blocks = padded.permute(0, 2, 3, 1).reshape(n, hs, 2, ws, 2, c).transpose(2, 3)  # (N, u, v, ri, si, C)
    return blocks.reshape(n, hs, ws, 4 * c).permute(0, 3, 1, 2)


class FlatLinear(nn.Module):
    """nn.Flatten + the first dense layer, flattening in channels-last memory order."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        weight = self.linear.weight.view(-1, c, h, w).permute(0, 2, 3, 1).reshape(-1, c * h * w)
        return F.linear(x.permute(0, 2, 3, 1).reshape(n, -1), weight, self.linear.bias)


class _FewChannelConv(torch.autograd.Function):
    """conv2d (stride 1) whose input gradient is a transposed conv in NCHW layout."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):  # type: ignore[override]
        # Gradients go back in each input's own dtype (float32 weights under autocast).
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        if torch.is_autocast_enabled(x.device.type):  # cast as autocast would, then run outside it
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = F.conv2d(x, weight, bias, padding=padding)
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(grad.contiguous(), weight.contiguous(), padding=ctx.padding)
            grad_x = grad_x.contiguous(memory_format=torch.channels_last).to(ctx.dtypes[0])
        _, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], list(ctx.padding), [1, 1],
            False, [0, 0], 1, [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]])
        grad_w = None if grad_w is None else grad_w.to(ctx.dtypes[1])
        grad_b = None if grad_b is None else grad_b.to(ctx.dtypes[2])
        return grad_x, grad_w, grad_b, None


class FewChannelConv(nn.Module):
    """A stride-1 conv with few input channels whose input gradient oneDNN computes
    faster as a transposed conv in NCHW layout, layout copies included; from 16 input
    channels on the two are even, so only convs with at most FEW_CHANNELS take it."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return _FewChannelConv.apply(x, c.weight, c.bias, c.padding)


FEW_CHANNELS = 8


def _few_channels(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.in_channels <= FEW_CHANNELS and module.stride == (1, 1)
            and module.dilation == (1, 1) and module.groups == 1 and isinstance(module.padding, tuple))


def phase_block_applies(model: LeNet) -> bool:
    """Whether the first conv block is conv -> activation -> 2x2/2 average pool (no batch
    norm between them), read from the model's own layers."""
    f = model.features
    pool = f._modules.get("pool1")
    return (list(f._modules)[:3] == ["conv1", "act1", "pool1"] and isinstance(pool, nn.AvgPool2d)
            and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0))
            and not pool.ceil_mode and f.conv1.stride == (1, 1))


class FusedLeNet(nn.Module):
    """A LeNet's forward with the rewrites above; its parameters are the model's."""

    def __init__(self, model: LeNet):
        super().__init__()
        self.model = model
        f = model.features
        layers = list(f._modules.values())
        if phase_block_applies(model):
            layers = [PhaseBlock(f.conv1, f.act1, f.pool1), *layers[3:]]
        # The first conv's input is the image, which needs no gradient: later convs only.
        self.features = nn.Sequential(*[FewChannelConv(m) if m is not f.conv1 and _few_channels(m) else m
                                        for m in layers])
        layers = list(model.classifier._modules.values())
        self.classifier = nn.Sequential(FlatLinear(layers[1]), *layers[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def fused_forward(model: nn.Module) -> nn.Module:
    """The model's forward with the rewrites that apply to it; the model itself for
    anything that is not a LeNet."""
    return FusedLeNet(model) if isinstance(model, LeNet) else model
