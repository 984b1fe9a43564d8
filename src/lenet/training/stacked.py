"""K same-shaped LeNets as one: a stacked module and a stacked optimiser.

    StackedModels     parameters stacked along a leading K dimension (torch.func's
                      stack_module_state); convolutions as K channel groups, dense layers
                      as batched matrix products: (K, B, 1, 28, 28) in, (K, B, classes) out
    StackedOptimizer  SGD or Adam/AdamW over the stacked parameters, each model with its
                      own hyper-parameters; to and from each model's torch.optim state

Used by ``multi`` to train runs together.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.func import stack_module_state

from ..errors import UsageError
from .optim import make_optimizer
from ..configuration.run import RunConfig


class StackedModels(nn.Module):
    """K same-shaped LeNets as one module: parameters stacked along a leading K
    dimension, one forward for all. Input (B, C, H, W) goes to every model;
    (K, B, C, H, W) gives each model its own batch. Output (K, B, classes).

    The conv blocks run with the K models side by side as channel groups,
    (B, K*C, H, W) through one grouped convolution (groups=K), and the dense layers as
    one batched matrix product per layer. Both are single native kernels forward and
    backward: torch.func.vmap's rule for a convolution's backward computed the weight
    gradient one model at a time, 64 kernel launches per layer and step for 64 models
    (measured on an H200: 15 ms per step, a third of it in those launches).
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.k = len(models)
        self.stacked_params, self.stacked_buffers = stack_module_state(list(models))  # dicts of (K, ...) leaves
        self.base = copy.deepcopy(models[0]).to("meta")  # the structure; its train/eval mode drives dropout
        self.layers = [(f"features.{n}", mod) for n, mod in self.base.features.named_children()] + \
                      [(f"classifier.{n}", mod) for n, mod in self.base.classifier.named_children()]
        # On a GPU a one-channel convolution of K models as K groups runs as PyTorch's
        # depthwise kernel: 2.7 ms forward and 1.5 ms backward per step for 64 LeNets on an
        # H200, 40% of the step. As im2col and one batched product it is mostly memory
        # traffic. On the CPU the grouped convolution is the faster of the two.
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


def _per_model(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(K,) hyper-parameters shaped (K, 1, 1, ...) to broadcast over a stacked tensor."""
    t = torch.tensor(values, dtype=like.dtype, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """SGD (momentum, Nesterov, L2) or Adam/AdamW over stacked parameters, with each
    model's own lr, momentum and weight decay; the same arithmetic as torch.optim's
    single-tensor implementations, so model k follows its separate run. Its state
    converts to and from each model's torch.optim state_dict (torch_state, load)."""

    def __init__(self, params: dict[str, torch.Tensor], cfgs: Sequence[RunConfig]):
        self.kind = cfgs[0].optim.optimizer
        self.nesterov = cfgs[0].optim.nesterov
        self.cfgs = list(cfgs)
        self.params = params
        self.momentum = [c.optim.momentum for c in cfgs]
        self.weight_decay = [c.optim.weight_decay for c in cfgs]
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self._constants: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0
        self.betas, self.eps = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults

    def _constant(self, name: str, key: str, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        """A per-model hyper-parameter shaped for ``like``, made once (not one host copy per step)."""
        cache = self._constants.setdefault(name, {})
        if key not in cache:
            cache[key] = _per_model(values, like)
        return cache[key]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lrs: torch.Tensor) -> None:
        """One update; ``lrs``: (K,) this step's learning rates, on the parameters' device."""
        self.steps += 1
        for (name, p), g in zip(self.params.items(), grads):
            lr = lrs.to(p.dtype).view(-1, *([1] * (p.dim() - 1)))
            wd = self._constant(name, "weight_decay", self.weight_decay, p)
            state = self.state.setdefault(name, {})
            if self.kind == "sgd":
                g = g + wd * p
                m = self._constant(name, "momentum", self.momentum, p)
                buf = state.get("momentum")
                buf = g.clone() if buf is None else buf.mul_(m).add_(g)
                state["momentum"] = buf
                p.sub_(lr * (g + m * buf if self.nesterov else buf))
                continue
            if self.kind == "adamw":
                p.mul_(1 - lr * wd)
            else:
                g = g + wd * p
            b1, b2 = self.betas
            exp_avg = state.setdefault("exp_avg", torch.zeros_like(p)).mul_(b1).add_(g, alpha=1 - b1)
            exp_avg_sq = state.setdefault("exp_avg_sq", torch.zeros_like(p)).mul_(b2).addcmul_(g, g, value=1 - b2)
            bias1, bias2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
            denom = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(self.eps)
            p.sub_((lr / bias1) * exp_avg / denom)

    def torch_state(self, k: int, model: nn.Module) -> dict[str, Any]:
        """Model k's optimiser state as its own torch.optim optimiser would save it."""
        optimizer = make_optimizer(model, self.cfgs[k])
        for (name, _), param in zip(self.params.items(), model.parameters()):
            state = self.state.get(name)
            if not state:
                continue
            if self.kind == "sgd":
                if self.momentum[k] != 0:  # torch keeps no buffer without momentum
                    optimizer.state[param] = {"momentum_buffer": state["momentum"][k].clone()}
            else:
                optimizer.state[param] = {"step": torch.tensor(float(self.steps)),
                                          "exp_avg": state["exp_avg"][k].clone(),
                                          "exp_avg_sq": state["exp_avg_sq"][k].clone()}
        return optimizer.state_dict()

    def load(self, saved: Sequence[dict[str, Any]], models: Sequence[nn.Module]) -> None:
        """The stacked state from each model's torch.optim state_dict (a checkpoint's)."""
        per_model = []
        for cfg, model, state_dict in zip(self.cfgs, models, saved):
            optimizer = make_optimizer(model, cfg)
            optimizer.load_state_dict(state_dict)
            per_model.append([optimizer.state.get(p, {}) for p in model.parameters()])
        keys = {"sgd": ("momentum_buffer",)}.get(self.kind, ("exp_avg", "exp_avg_sq"))
        for i, (name, p) in enumerate(self.params.items()):
            if not any(states[i] for states in per_model):
                continue  # no step taken yet (or SGD without momentum): nothing to restore
            for key in keys:
                stacked = torch.stack([states[i].get(key, torch.zeros_like(p[0])).to(p.device)
                                       for states in per_model])
                self.state.setdefault(name, {})["momentum" if key == "momentum_buffer" else key] = stacked
            if self.kind != "sgd":
                self.steps = int(per_model[0][i]["step"])
