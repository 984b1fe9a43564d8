"""Many LeNets at once: runs whose layers have the same shapes train together.

One LeNet-5 step is a few hundred small kernels; on a GPU each leaves most of the
device idle, and on a CPU each pays Python and dispatch overhead. Runs that differ
only in seed, learning rate, schedule, momentum, weight decay or initialisation
share every tensor shape, so we stack their parameters along a new leading
dimension (torch.func.stack_module_state) and run one forward and backward for
all K of them, convolutions as channel groups and dense layers as batched matrix
products: (K, B, 1, 28, 28) in, (K, B, classes) out.

A group is driven by the one driver (driver.fit) that drives a single run: only
the learner differs (learners.GroupLearner, over stacked.StackedModels). Each run keeps its identity: model k is
initialised from its own seed exactly as ``train`` would, sees its own shuffling
order and validation split, and gets its own optimiser hyper-parameters, so its
result equals a separate run up to floating-point rounding. Each run's checkpoint.pt
is a single run's checkpoint (its weights, its optimiser state in torch.optim's
format, its random states), so an interrupted group resumes together
(``run.resume_many``) or each run alone (``lenet train --resume``).

Speed switches: precision and ``--deterministic`` apply as in a single run; the
NOT_STACKED do not fit the stacked step and are refused (a sweep trains such runs
one by one instead).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import torch

from ..configuration.build import FLAGS_BY_NAME, flatten
from ..configuration.run import RunConfig
from ..data.datasets import DeviceData, prepare_data, validation_indices
from ..errors import UsageError
from ..speed.config import NOT_STACKED

# Fields that may differ between runs trained together: none changes a tensor shape
# or the computation graph, only values (initial weights, data order, update sizes).
VARYING = {
    "name", "out", "seed",
    "optim.lr", "optim.momentum", "optim.weight_decay", "optim.schedule", "optim.step_epochs",
    "optim.gamma", "optim.warmup_fraction", "model.init", "model.name",
}


def group_key(cfg: RunConfig) -> str | None:
    """Runs with equal keys can train together; None for runs that cannot batch at all."""
    if cfg.model.batch_norm or cfg.train.dry_run or any(getattr(cfg.speed, s) for s in NOT_STACKED) \
            or cfg.data.augment.active or cfg.optim.ema or cfg.train.tta:
        # Augmentation, weight averaging and test-time augmentation are the single loop's.
        # BN keeps running statistics per model, which the stacked step does not.
        return None
    flat = flatten(cfg.to_dict())
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


def check_group(cfgs: Sequence[RunConfig]) -> None:
    for cfg in cfgs:
        on = [s for s in NOT_STACKED if getattr(cfg.speed, s)]
        if on:
            name = f"--{on[0].replace('_', '-')}" if on[0] in FLAGS_BY_NAME else f"speed.{on[0]}"
            raise UsageError(f"{name} does not work for runs trained together (one stacked "
                             "step for all); train such runs one by one (lenet sweep --separately)")
    keys = {group_key(c) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise UsageError("runs trained together must differ only in " + ", ".join(sorted(VARYING))
                         + " and use no batch norm and no dry run")


def group_data(cfgs: Sequence[RunConfig], device: torch.device, dataset: Any = None) -> DeviceData:
    """The shared dataset on ``device``; a group's runs each hold out their own validation
    split, (K, N) rows, one run its (N,) rows."""
    first = cfgs[0]
    if len(cfgs) == 1:
        return prepare_data(first, device, dataset)
    data = prepare_data(first.model_copy(update={"data": first.data.model_copy(update={"val_split": 0.0})}), device,
                        dataset)
    if first.data.val_split == 0:
        if data.val_index is None:
            return data
        k = len(cfgs)  # the data's own validation set: the same rows for every run
        return DeviceData(data.dataset, data.train_index.expand(k, -1), data.val_index.expand(k, -1))
    labels = data.dataset.train.labels.cpu()
    splits = [validation_indices(labels, first.data.val_split, c.seed, first.data.val_select)
              for c in cfgs]  # each run's own seed ("last": the same rows for all)
    return DeviceData(data.dataset, torch.stack([s[0] for s in splits]).to(device),
                      torch.stack([s[1] for s in splits]).to(device))
