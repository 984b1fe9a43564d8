"""K same-shaped LeNets as one: a stacked module and a stacked optimiser.

    StackedModels     parameters stacked along a leading K dimension (torch.func's
                      stack_module_state); convolutions as K channel groups, dense layers
                      as batched matrix products: (K, B, 1, 28, 28) in, (K, B, classes) out
    StackedOptimizer  the run's optimiser over the stacked parameters, each model with
                      its own hyper-parameters; to and from each model's optimiser state

Used by ``multi`` to train runs together.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any, Sequence

import torch
from torch import nn
from torch.func import stack_module_state

from ..errors import UsageError
from .optim import Optimizer
from ..configuration.run import RunConfig


class StackedModels(nn.Module):
    """K same-shaped LeNets as one module: parameters stacked along a leading K
    dimension, one forward for all. Input (B, C, H, W) goes to every model;
    (K, B, C, H, W) gives each model its own batch. Output (K, B, classes).

    The conv blocks run with the K models side by side as channel groups,
    (B, K*C, H, W) through one grouped convolution (groups=K), and the dense layers as
    one batched matrix product per layer. Both are single native kernels forward and
    backward: torch.func.vmap's rule for a convolution's backward computed the weight
    gradient one model at a time, one kernel launch per model, layer and step.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.k = len(models)
        self.stacked_params, self.stacked_buffers = stack_module_state(list(models))  # dicts of (K, ...) leaves
        self.base = copy.deepcopy(models[0]).to("meta")  # the structure; its train/eval mode drives dropout
        self.layers = [(f"features.{n}", mod) for n, mod in self.base.features.named_children()] + \
                      [(f"classifier.{n}", mod) for n, mod in self.base.classifier.named_children()]
        # On a GPU a one-channel convolution of K models as K groups runs as PyTorch's slow
        # depthwise kernel; as im2col and one batched product it is mostly memory traffic
        # (docs/speed.md). On the CPU the grouped convolution is the faster of the two.
        self.im2col_one_channel: bool | None = None  # None: on CUDA only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, p = self.k, self.stacked_params
        if x.dim() == 4:  # one batch for every model
            x = x.unsqueeze(0).expand(k, *x.shape)
        batch = x.shape[1]
        h = x.transpose(0, 1).reshape(batch, -1, *x.shape[3:])  # (B, K*C, H, W): model k's channels in group k
        for name, layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                weight = p[f"{name}.weight"]  # (K, O, C, kh, kw)
                bias = p.get(f"{name}.bias")
                im2col = self.im2col_one_channel if self.im2col_one_channel is not None else h.is_cuda
                if layer.in_channels == 1 and im2col:
                    h = self._one_channel_conv(h, weight, bias, layer)
                else:
                    h = nn.functional.conv2d(h, weight.flatten(0, 1), None if bias is None else bias.flatten(),
                                             layer.stride, layer.padding, layer.dilation, groups=k)
            elif isinstance(layer, nn.Flatten):
                h = h.reshape(batch, k, -1).transpose(0, 1)  # (K, B, features)
            elif isinstance(layer, nn.Linear):
                weight = p[f"{name}.weight"]  # (K, out, in)
                bias = p.get(f"{name}.bias")
                h = torch.bmm(h, weight.transpose(1, 2)) if bias is None else \
                    torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                raise UsageError("batch norm cannot train K runs at once (its running statistics)")
            else:  # activations, pooling and dropout act per element or per channel: K models alike
                h = layer(h)
        return h  # (K, B, classes)

    def _one_channel_conv(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          layer: nn.Conv2d) -> torch.Tensor:
        """(B, K, H, W) through K one-channel convolutions: patches (B, K, kh*kw, L) times
        each model's (O, kh*kw) weights, (B, K*O, H', W') out."""
        batch, k, height, width = h.shape
        cols = nn.functional.unfold(h.reshape(batch * k, 1, height, width), layer.kernel_size, layer.dilation,
                                    layer.padding, layer.stride)  # (B*K, kh*kw, L)
        out = torch.einsum("bkcl,koc->bkol", cols.view(batch, k, cols.shape[1], -1), weight.flatten(2))  # (B, K, O, L)
        if bias is not None:
            out = out + bias.view(1, k, -1, 1)
        size = [(n + 2 * p - d * (kk - 1) - 1) // s + 1 for n, p, d, kk, s in
                zip((height, width), layer.padding, layer.dilation, layer.kernel_size, layer.stride)]
        return out.reshape(batch, -1, *size)

    def state_dict_of(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's weights, as LeNet.state_dict() names them."""
        return {**{n: t[k].detach().clone() for n, t in self.stacked_params.items()},
                **{n: t[k].clone() for n, t in self.stacked_buffers.items()}}


class StackedOptimizer(Optimizer):
    """The run's optimiser (optim.Optimizer: one update rule for one model and K) over
    stacked parameters, each model with its own lr, momentum and weight decay as (K,)
    tensors, so model k follows its separate run. Its state converts to and from each
    model's own optimiser state (``model_state``, ``load_models``), the single-run
    checkpoint format."""

    def __init__(self, params: dict[str, torch.Tensor], cfgs: Sequence[RunConfig]):
        first = next(iter(params.values()))
        per_model = lambda values: torch.tensor(values, dtype=first.dtype, device=first.device)  # noqa: E731
        o = cfgs[0].optim
        super().__init__(list(params.values()), o.optimizer, lr=per_model([c.optim.lr for c in cfgs]),
                         momentum=per_model([c.optim.momentum for c in cfgs]),
                         weight_decay=per_model([c.optim.weight_decay for c in cfgs]),
                         nesterov=o.nesterov and o.momentum > 0, eps=o.eps, eps_hat=o.eps_hat)
        self.cfgs = list(cfgs)

    def model_state(self, k: int) -> dict[str, Any]:
        """Model k's optimiser state, as its own run's optimiser saves it."""
        cfg = self.cfgs[k].optim
        saved = self.state_dict()
        state = {}
        for i, entries in saved["state"].items():
            if self.kind == "sgd" and cfg.momentum == 0:
                continue  # torch keeps no buffer without momentum
            state[i] = {key: (v if key == "step" else v[k]).clone() for key, v in entries.items()}
        group = {**saved["param_groups"][0], "lr": cfg.lr, "weight_decay": cfg.weight_decay}
        if self.kind == "sgd":
            group.update(momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
        return {"state": state, "param_groups": [group]}

    def load_models(self, saved: Sequence[dict[str, Any]]) -> None:
        """The stacked state from each model's optimiser state (a checkpoint's)."""
        params = self.params
        for s in saved:
            if len(s["param_groups"]) != 1 or len(s["param_groups"][0]["params"]) != len(params):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size "
                                 "of optimizer's group")
        self.state = defaultdict(dict)
        for i, p in enumerate(params):
            entries = [s["state"].get(i, s["state"].get(str(i))) for s in saved]
            if not any(entries):
                continue  # no step taken yet (or SGD without momentum): nothing to restore
            keys = ("momentum_buffer",) if self.kind == "sgd" else ("exp_avg", "exp_avg_sq")
            self.state[p] = {key: torch.stack([(e or {}).get(key, torch.zeros_like(p[0])).to(p.device)
                                               for e in entries]) for key in keys}
            if self.kind != "sgd":
                self.state[p]["step"] = torch.as_tensor(float(next(e for e in entries if e)["step"]))
