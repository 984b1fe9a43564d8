"""Building a RunConfig: defaults <- preset <- file <- dotted overrides <- flags.

Unknown keys and bad values are errors that name the field, the value and, for
typos, the closest valid key. The CLI's training flags are declared here once
(FLAGS), so `lenet train --batch-size` and `lenet.config(batch_size=)` agree.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.augment import NAMED as AUGMENTATIONS
from ..data.augment import named
from ..data.catalog import DATASETS
from ..errors import ConfigError
from ..model.network import MODEL_REGISTRY
from .files import load_file, parse_yaml
from .presets import PRESETS, preset_name
from .run import RunConfig, validate

def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree["optim"]["lr"] = value for "optim.lr"; intermediate dicts are created."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """"optim.lr=0.1" -> ("optim.lr", 0.1); values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. optim.lr=0.1)")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value



def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"pool": "max"}, "optim.lr": 0.1} -> {"model.pool": "max", "optim.lr": 0.1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


# --------------------------------------------------------------------------- flags

@dataclass(frozen=True)
class Flag:
    """One training option as the CLI spells it (--batch-size) and Python does
    (lenet.config(batch_size=...)), and the config field it sets."""

    name: str  # Python keyword; the CLI flag is --name with "-" for "_"
    key: str  # dotted config field
    help: str  # states the default, as every CLI flag's help does
    type: Any = str  # bool: a switch (--amp), set only when given
    choices: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")


FLAGS: tuple[Flag, ...] = (
    Flag("device", "device", "auto | cpu | cuda | cuda:N | mps (default: auto)"),
    Flag("seed", "seed", "random seed for init, shuffling and the validation split (default: 0)", int),
    Flag("epochs", "train.epochs", "passes over the training set (d2l: 10)", int),
    Flag("batch_size", "train.batch_size", "examples per step (d2l: 256, keras: 64)", int),
    Flag("lr", "optim.lr", "learning rate (d2l: 0.9, keras: 0.001)", float),
    Flag("optimizer", "optim.optimizer", "(d2l: sgd, keras: adam)", str, ("sgd", "adam", "adamw")),
    Flag("momentum", "optim.momentum", "SGD momentum (default: 0)", float),
    Flag("weight_decay", "optim.weight_decay", "L2 / decoupled weight decay (default: 0)", float),
    Flag("schedule", "optim.schedule", "learning-rate schedule over all steps (default: constant)", str,
         ("constant", "step", "cosine", "onecycle")),
    Flag("label_smoothing", "optim.label_smoothing", "(default: 0)", float),
    Flag("val_split", "data.val_split", "fraction of train held out (keras: 0.1); which rows: data.val_select "
         "(default: stratified)", float),
    Flag("dataset", "data.dataset", "(default: fashion-mnist)", str, tuple(DATASETS)),
    Flag("data_dir", "data.data_dir", "folder holding fashion-mnist/, mnist/ and cifar10/ (default: search)"),
    Flag("data", "data.path", "your own data instead of --dataset: an image folder, a .csv or .npz file, or a "
                              "folder of CSV, IDX or CIFAR-10 files (docs/data.md)"),
    Flag("image_size", "data.image_size", "resize every picture to N x N on load (default: as they are)", int),
    Flag("channels", "data.channels", "1 (grey) or 3 (RGB) (default: as the pictures are)", int),
    Flag("test_fraction", "data.test_fraction", "data that comes as one set: the share of each class tested on "
                                                "(default: 0.2)", float),
    Flag("skip_bad", "data.skip_bad", "leave out pictures that cannot be read instead of stopping", bool),
    Flag("model", "model.name",
         f"registered architecture: {' | '.join(sorted(MODEL_REGISTRY))} (default: from preset)"),
    Flag("name", "name", "run directory name (default: <preset>-<dataset>-<time>)"),
    Flag("out", "out", "folder for run directories (default: runs)"),
    Flag("augment", "data.augment", f"augment training images: a comma list of {', '.join(AUGMENTATIONS)} "
                                    "(default: none; strengths: --set data.augment.rotate=15 ...)"),
    Flag("ema", "optim.ema", "decay of a moving average of the weights, e.g. 0.999 (default: 0, none)", float),
    Flag("tta", "train.tta", "also report test accuracy with test-time augmentation", bool),
    Flag("dry_run", "train.dry_run", "one batch of training and evaluation (smoke test)", bool),
    Flag("deterministic", "train.deterministic", "deterministic algorithms (slower)", bool),
    # Speed switches: each has a trade-off, so each is off unless given.
    Flag("compile", "speed.compile", "torch.compile the model (first epoch pays the compile time)", bool),
    Flag("precision", "speed.precision", "auto: bf16 where this CPU runs it faster, measured (default: auto)", str,
         ("auto", "fp32", "bf16", "tf32")),
    Flag("amp", "speed.amp", "bfloat16 autocast on CPU and CUDA (= --precision bf16)", bool),
    Flag("channels_last", "speed.channels_last", "channels-last (NHWC) memory layout (default: on for the CPU)", bool),
    Flag("cuda_graphs", "speed.cuda_graphs", "CUDA only: record the whole step as a CUDA graph, replay it", bool),
    Flag("micro_batch", "speed.micro_batch", "forward and backward in parts of N images, gradients summed; 0: off "
         "(default: automatic on the CPU without batch norm)", int),
)
FLAGS_BY_NAME = {f.name: f for f in FLAGS}


def flag_fields(values: dict[str, Any]) -> dict[str, Any]:
    """{"batch_size": 64, "amp": True} -> {"train.batch_size": 64, "speed.amp": True};
    an unknown name is a ConfigError with the closest flag. None (and False for a
    switch) means "not given": the preset's value stays."""
    fields = {}
    for name, value in values.items():
        if name not in FLAGS_BY_NAME:
            close = difflib.get_close_matches(name, list(FLAGS_BY_NAME), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown option {name!r}{hint} (options: {', '.join(FLAGS_BY_NAME)}; "
                              "any other field: set={'section.field': value})")
        flag = FLAGS_BY_NAME[name]
        if value is None or (flag.type is bool and value is False):
            continue
        if name == "augment":  # names -> the fields they turn on (augment.NAMED)
            try:
                fields.update({f"data.augment.{k}": v for k, v in named(value).items()})
            except ValueError as exc:
                raise ConfigError(f"--augment {value}: {exc}") from None
            continue
        fields[flag.key] = value
    return fields


def build_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults <- preset <- file <- overrides <- flags (dotted keys; None = unset).

    ``overrides``: "KEY=VALUE" texts (values parsed as YAML), or a dict of dotted keys
    to values that are already typed (lenet.config's ``set=``)."""
    tree: dict[str, Any] = {}
    source = "config"
    file_data: dict[str, Any] = {}
    if file is not None:
        file_data = load_file(file)
        source = f"config file {file}"
        preset = preset or file_data.pop("preset", None)
        file_data.pop("preset", None)
    if preset is not None:
        preset = preset_name(preset)
        tree = deep_merge(PRESETS[preset], {"preset": preset})
    tree = deep_merge(tree, file_data)
    pairs = overrides.items() if isinstance(overrides, dict) else (parse_override(t) for t in overrides or [])
    for key, value in pairs:
        set_dotted(tree, key, value)
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(tree, key, value)
    return validate(tree, source)

