"""Many LeNets at once: runs whose layers have the same shapes train together.

One LeNet-5 step is a few hundred small kernels; on a GPU each leaves most of the
device idle, and on a CPU each pays Python and dispatch overhead. Runs that differ
only in seed, learning rate, schedule, momentum, weight decay or initialisation
share every tensor shape, so we stack their parameters along a new leading
dimension (torch.func.stack_module_state) and run one vmapped forward and
backward for all K of them: (K, B, 1, 28, 28) in, (K, B, classes) out.

Each run keeps its own identity: model k is initialised from its own seed exactly
as `train` would, sees its own shuffling order (and its own validation split),
and gets its own optimiser hyper-parameters, so its result equals a separate run
up to floating-point rounding. Each run gets the same run directory files as
`train` writes (config, metrics, curves, model, status), except checkpoint.pt:
an interrupted group restarts its unfinished runs from scratch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .checkpoint import MODEL_FILE, save_model
from .config import RunConfig
from .data import load_dataset, stratified_indices
from .models import LeNet
from .runs import (RunLog, create_run_dir, default_run_name, environment_record, run_lock, save_config, write_json,
                   write_metrics)
from .train import Normalizer, TrainResult, format_epoch, lr_factor, resolve_device

# Fields that may differ between runs trained together: none changes a tensor shape
# or the computation graph, only values (initial weights, data order, update sizes).
VARYING = {
    "name", "out", "seed",
    "optim.lr", "optim.momentum", "optim.weight_decay", "optim.schedule", "optim.step_epochs",
    "optim.gamma", "optim.warmup_fraction", "model.init", "model.name",
}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def group_key(cfg: RunConfig) -> str | None:
    """Runs with equal keys can train together; None for runs that cannot batch at all."""
    if cfg.model.batch_norm or cfg.train.dry_run:
        return None  # BN's running statistics are updated in place, which vmap cannot batch
    flat = _flatten(cfg.to_dict())
    return json.dumps({k: v for k, v in flat.items() if k not in VARYING}, sort_keys=True)


def groups(cfgs: Sequence[RunConfig]) -> list[list[int]]:
    """Indices of ``cfgs`` grouped by group_key; unbatchable runs are groups of one."""
    by_key: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        key = group_key(cfg)
        if key is None:
            out.append([i])
        else:
            by_key.setdefault(key, []).append(i)
    return list(by_key.values()) + out


def _per_model(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(K,) hyper-parameters shaped (K, 1, 1, ...) to broadcast over a stacked tensor."""
    t = torch.tensor(values, dtype=like.dtype, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """SGD (momentum, Nesterov, L2) or Adam/AdamW over stacked parameters, with each
    model's own lr, momentum and weight decay; the same arithmetic as torch.optim's
    single-tensor implementations, so model k follows its separate run."""

    def __init__(self, params: dict[str, torch.Tensor], cfgs: Sequence[RunConfig]):
        self.kind = cfgs[0].optim.optimizer
        self.nesterov = cfgs[0].optim.nesterov
        self.params = params
        self.momentum = [c.optim.momentum for c in cfgs]
        self.weight_decay = [c.optim.weight_decay for c in cfgs]
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0
        self.betas, self.eps = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lrs: Sequence[float]) -> None:
        self.steps += 1
        for (name, p), g in zip(self.params.items(), grads):
            lr = _per_model(lrs, p)
            wd = _per_model(self.weight_decay, p)
            state = self.state.setdefault(name, {})
            if self.kind == "sgd":
                g = g + wd * p
                m = _per_model(self.momentum, p)
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


def train_many(cfgs: Sequence[RunConfig], exist_ok: bool = False, quiet: bool = False) -> list[TrainResult]:
    """Train runs that share a group_key together; one TrainResult per run, in order."""
    keys = {group_key(c) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise ValueError("train_many needs runs that differ only in " + ", ".join(sorted(VARYING)))
    cfgs = list(cfgs)
    first = cfgs[0]
    device = resolve_device(first.device)
    run_dirs = [create_run_dir(c.out, c.name or default_run_name(c), exist_ok) for c in cfgs]
    with contextlib.ExitStack() as locks:
        for d in run_dirs:  # one writer per run, as in train()
            locks.enter_context(run_lock(d))
        return _train_many_locked(cfgs, run_dirs, device, quiet)


def _train_many_locked(cfgs: list[RunConfig], run_dirs: list[Path], device: torch.device,
                       quiet: bool) -> list[TrainResult]:
    K, first = len(cfgs), cfgs[0]
    cfgs = [c.model_copy(update={"name": d.name}) for c, d in zip(cfgs, run_dirs)]
    logs = [RunLog(d, quiet=True) for d in run_dirs]
    say = RunLog(None, quiet=quiet)

    data = load_dataset(first.data.dataset, first.data.data_dir)
    normalize = Normalizer(first.data.normalize, data.spec.mean, data.spec.std)
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    test_images, test_labels = data.test.images.to(device), data.test.labels.to(device)
    # Each run's own split: the stratified split is a function of its seed, as in train().
    if first.data.val_split > 0:
        splits = [stratified_indices(data.train.labels, first.data.val_split, c.seed) for c in cfgs]
        train_index = torch.stack([s[0] for s in splits]).to(device)  # (K, N_train)
        val_index = torch.stack([s[1] for s in splits]).to(device)  # (K, N_val)
    else:
        train_index = torch.arange(len(labels), device=device).expand(K, -1)
        val_index = None

    models = []
    for c in cfgs:
        torch.manual_seed(c.seed)  # the same draw of initial weights as train()'s seed_everything
        models.append(LeNet(c.model).to(device))
    params, buffers = stack_module_state(models)  # dicts of (K, ...) leaf tensors
    base = copy.deepcopy(models[0]).to("meta")

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    # randomness="different": each model draws its own dropout masks.
    per_model_input = vmap(forward, in_dims=(0, 0, 0), randomness="different")
    shared_input = vmap(forward, in_dims=(0, 0, None), randomness="different")
    optimizer = StackedOptimizer(params, cfgs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=first.optim.label_smoothing, reduction="none")

    n_train, batch_size, epochs = train_index.shape[1], first.train.batch_size, first.train.epochs
    steps_per_epoch = math.ceil(n_train / batch_size)
    shuffles = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    metrics: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    first_bad = torch.full((K,), -1, dtype=torch.long, device=device)
    for c, d in zip(cfgs, run_dirs):
        save_config(d, c)
        write_json(d / "environment.json", {**environment_record(device, c.seed), "trained_with": f"{K} runs at once"})
    say(f"training {K} runs together on {device} (vmap over stacked parameters)")

    @torch.no_grad()
    def evaluate(index: torch.Tensor | None, imgs: torch.Tensor, lbls: torch.Tensor) -> tuple[list, list]:
        base.eval()
        n = imgs.shape[0] if index is None else index.shape[1]
        loss_sum = torch.zeros(K, device=device)
        correct = torch.zeros(K, dtype=torch.long, device=device)
        for start in range(0, n, first.train.eval_batch_size):
            if index is None:
                chunk = slice(start, start + first.train.eval_batch_size)
                x, y = normalize(imgs[chunk]), lbls[chunk]
                logits = shared_input(params, buffers, x)  # (K, b, C)
                y = y.expand(K, -1)
            else:
                ex = index[:, start:start + first.train.eval_batch_size]
                logits = per_model_input(params, buffers, normalize(imgs[ex]))
                y = lbls[ex]
            losses = nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")
            loss_sum += losses.view(K, -1).sum(1)
            correct += (logits.argmax(-1) == y).sum(1)
        return (loss_sum / n).tolist(), (correct.double() / n).tolist()

    for epoch in range(epochs):
        base.train()
        # (K, N_train) positions into each run's own training indices, one permutation per run.
        order = torch.stack([torch.randperm(n_train, generator=g) for g in shuffles]).to(device)
        loss_sum = torch.zeros(K, device=device)
        correct = torch.zeros(K, dtype=torch.long, device=device)
        tic = time.perf_counter()
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            ex = torch.gather(train_index, 1, order[:, step * batch_size:(step + 1) * batch_size])  # (K, B)
            x, y = normalize(images[ex]), labels[ex]  # (K, B, 1, 28, 28), (K, B)
            logits = per_model_input(params, buffers, x)  # (K, B, C)
            losses = loss_fn(logits.flatten(0, 1), y.flatten()).view(K, -1).mean(1)  # (K,)
            # Models are independent, so the gradient of the sum is each model's own gradient.
            grads = torch.autograd.grad(losses.sum(), list(params.values()))
            optimizer.step(grads, [c.optim.lr * lr_factor(c, global_step, steps_per_epoch) for c in cfgs])
            with torch.no_grad():
                bad = ~torch.isfinite(losses)
                first_bad = torch.where(bad & (first_bad < 0), global_step, first_bad)
                loss_sum += losses * ex.shape[1]
                correct += (logits.argmax(-1) == y).sum(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - tic
        val = evaluate(val_index, images, labels) if val_index is not None else None
        test = evaluate(None, test_images, test_labels)
        train_loss, train_correct = (loss_sum / n_train).tolist(), correct.tolist()
        next_step = (epoch + 1) * steps_per_epoch
        for k, c in enumerate(cfgs):
            row = {
                "epoch": epoch + 1, "train_loss": train_loss[k], "train_accuracy": train_correct[k] / n_train,
                "val_loss": val[0][k] if val else None, "val_accuracy": val[1][k] if val else None,
                "test_loss": test[0][k], "test_accuracy": test[1][k],
                "lr": c.optim.lr * lr_factor(c, next_step - 1, steps_per_epoch),  # the epoch's last step
                # The shared wall time is split evenly: K runs together took `seconds`.
                "epoch_seconds": round(seconds / K, 4),
                "examples_per_second": round(n_train * K / max(seconds, 1e-9), 1),
            }
            if int(first_bad[k]) < 0:
                metrics[k].append(row)
                write_metrics(run_dirs[k], metrics[k])
                logs[k](format_epoch(row, epochs))
        say(f"epoch {epoch + 1}/{epochs}: {K} runs, {seconds:.1f} s, {n_train * K / seconds:,.0f} examples/s in all; "
            f"test acc {min(test[1]):.4f}..{max(test[1]):.4f}")

    from .viz import plot_curves

    results = []
    for k, (c, d) in enumerate(zip(cfgs, run_dirs)):
        model = LeNet(c.model)
        model.load_state_dict({**{n: t[k].detach().cpu() for n, t in params.items()},
                               **{n: t[k].cpu() for n, t in buffers.items()}})
        bad = int(first_bad[k])
        if bad >= 0:
            reason = (f"training diverged: the loss became NaN or infinite at step {bad + 1}. "
                      "Try a lower learning rate (--lr).")
            write_json(d / "status.json", {"status": "diverged", "reason": reason, "epoch": len(metrics[k]) + 1})
            logs[k](reason)
            results.append(TrainResult(d, c, model, metrics[k], status="diverged"))
            continue
        plot_curves([(d.name, metrics[k])], d / "curves.png", title=d.name)
        save_model(d / MODEL_FILE, model, c, data.class_names,
                   extra={"test_accuracy": metrics[k][-1]["test_accuracy"], "epochs": len(metrics[k])})
        write_json(d / "status.json", {"status": "finished", "epochs": len(metrics[k]), "trained_with": K})
        results.append(TrainResult(d, c, model, metrics[k]))
    return results
