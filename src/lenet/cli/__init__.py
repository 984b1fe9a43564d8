"""The `lenet` command: parse arguments, call the library, map errors to exit codes.

This package only parses and calls; everything it does is importable from the
library. The core commands (train, summary, models, eval, plot, download, data)
live here; each further group of commands is a module of this package with a
`register(subparsers)` function, listed in COMMAND_MODULES. Exit codes live in
one place, ``main``: 0 ok, 1 runtime failure (data missing or corrupt,
divergence), 2 usage or config error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..errors import EXIT_INTERRUPTED, EXIT_OK, LenetError, UsageError

# CLI flag -> dotted config key. Every flag's default is "whatever the preset says".
TRAIN_FLAGS: list[tuple[str, str, dict[str, Any], str]] = [
    ("--device", "device", {}, "auto | cpu | cuda | cuda:N | mps (default: auto)"),
    ("--seed", "seed", {"type": int}, "random seed for init, shuffling and the validation split (default: 0)"),
    ("--epochs", "train.epochs", {"type": int}, "passes over the training set (d2l: 10)"),
    ("--batch-size", "train.batch_size", {"type": int}, "examples per step (d2l: 256, keras: 64)"),
    ("--lr", "optim.lr", {"type": float}, "learning rate (d2l: 0.9, keras: 0.001)"),
    ("--optimizer", "optim.optimizer", {"choices": ["sgd", "adam", "adamw"]}, "(d2l: sgd, keras: adam)"),
    ("--momentum", "optim.momentum", {"type": float}, "SGD momentum (default: 0)"),
    ("--weight-decay", "optim.weight_decay", {"type": float}, "L2 / decoupled weight decay (default: 0)"),
    ("--schedule", "optim.schedule", {"choices": ["constant", "step", "cosine", "onecycle"]},
     "learning-rate schedule over all steps (default: constant)"),
    ("--label-smoothing", "optim.label_smoothing", {"type": float}, "(default: 0)"),
    ("--val-split", "data.val_split", {"type": float}, "fraction of train held out, stratified (keras: 0.1)"),
    ("--dataset", "data.dataset", {"choices": ["fashion-mnist", "mnist"]}, "(default: fashion-mnist)"),
    ("--data-dir", "data.data_dir", {}, "folder holding fashion-mnist/ and mnist/ (default: search)"),
    ("--model", "model.name", {}, "registered architecture, see `lenet models` (default: from preset)"),
    ("--name", "name", {}, "run directory name (default: <preset>-<dataset>-<time>)"),
    ("--out", "out", {}, "folder for run directories (default: runs)"),
]


# Speed switches (train.<name>): off unless given.
SPEED_FLAGS = {
    "--compile": "torch.compile the model (first epoch pays the compile time)",
    "--amp": "bfloat16 autocast on CPU and CUDA",
    "--channels-last": "channels-last (NHWC) memory layout",
    "--cuda-graphs": "CUDA only: capture the compiled step as CUDA graphs",
}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into runs/<name>/",
                       description="Train from a preset or config file, with flag overrides.")
    p.add_argument("--preset", help="d2l | keras-v1 | keras-v2 (default: d2l unless --config is given)")
    p.add_argument("--config", type=Path, help="YAML or TOML file; may name a preset as `preset: d2l`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set model.pool=max --set model.kernel_size=3")
    for flag, _key, kwargs, text in TRAIN_FLAGS:
        p.add_argument(flag, default=None, help=text, **kwargs)
    p.add_argument("--dry-run", action="store_true", help="one batch of training and evaluation (smoke test)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower)")
    for flag, text in SPEED_FLAGS.items():
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument("--exist-ok", action="store_true", help="write into an existing run directory")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from ..config import build_config
    from ..train import train

    if args.resume is not None:
        train(None, resume_dir=args.resume)  # type: ignore[arg-type]
        return EXIT_OK
    flags = {key: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, key, _, _ in TRAIN_FLAGS}
    flags["train.dry_run"] = True if args.dry_run else None
    flags["train.deterministic"] = True if args.deterministic else None
    for flag in SPEED_FLAGS:
        name = flag.lstrip("-").replace("-", "_")
        flags[f"train.{name}"] = True if getattr(args, name) else None
    if flags.get("model.name"):
        from ..models import model_config

        flags["model.name"] = model_config(flags["model.name"]).name  # unknown names fail here
    preset = args.preset or (None if args.config else "d2l")
    cfg = build_config(preset, args.config, args.overrides, flags)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return EXIT_OK
    train(cfg, exist_ok=args.exist_ok)
    return EXIT_OK


def _load_architecture(target: str):
    """A ModelConfig from a registered model name, a preset, a run dir, a model file or a config file."""
    from ..config import PRESETS, build_config
    from ..models import MODEL_REGISTRY, model_config

    path = Path(target)
    if target in MODEL_REGISTRY:
        return model_config(target), target
    if target in PRESETS:
        return build_config(target).model, f"preset {target}"
    if path.is_dir() or path.suffix == ".safetensors":
        from ..checkpoint import load_model

        _, cfg, _ = load_model(path)
        return cfg.model, str(path)
    if path.is_file():
        return build_config(None, path).model, str(path)
    raise UsageError(f"{target!r} is neither a model (`lenet models`), a preset "
                     f"({', '.join(PRESETS)}), a run directory nor a config file")


def cmd_summary(args: argparse.Namespace) -> int:
    from ..models import LeNet, format_summary, summarize

    cfg, title = _load_architecture(args.target)
    shape = (1, cfg.in_channels, cfg.input_size, cfg.input_size)
    rows = summarize(LeNet(cfg), shape)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(format_summary(rows, f"{title}: input {'x'.join(map(str, shape))}"))
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import MODEL_DESCRIPTIONS, count_parameters, create_model, list_models

    for name in list_models(args.pattern):
        print(f"{name:<12} {count_parameters(create_model(name)):>8,} params  {MODEL_DESCRIPTIONS[name]}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    import csv
    import io

    import numpy as np

    misclassified_shown = 32  # the most confident mistakes: 4 rows of 8
    confused_pairs_written = 10

    from ..checkpoint import load_model, resolve_model_path
    from ..data import load_dataset
    from ..evaluate import evaluate_model, format_evaluation
    from ..runs import atomic_write_text, write_json
    from ..viz import plot_confusion, plot_image_grid

    model_path = resolve_model_path(args.target)
    out = Path(args.out) if args.out else model_path.parent
    out.mkdir(parents=True, exist_ok=True)
    _, cfg, _ = load_model(model_path)
    data = load_dataset(cfg.data.dataset, args.data_dir or cfg.data.data_dir)
    ev = evaluate_model(model_path, args.data_dir, args.device, dataset=data)
    plot_confusion(ev.confusion, ev.class_names, out / "confusion.png",
                   title=f"{model_path.parent.name}: test accuracy {ev.accuracy:.4f}")
    write_json(out / "eval.json", ev.to_dict())

    # Most-confused pairs, with each count as a share of its true class.
    totals = ev.confusion.sum(1)
    rows = [["true", "predicted", "count", "share_of_true_class"]]
    for true, predicted, count in ev.most_confused(confused_pairs_written):
        rows.append([true, predicted, count, f"{count / max(1, totals[ev.class_names.index(true)]):.4f}"])
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    atomic_write_text(out / "most_confused.csv", buffer.getvalue())

    # The most confident mistakes first: those say most about what the model believes.
    predictions = ev.predictions
    wrong = np.flatnonzero(predictions != ev.labels)
    confidence = ev.probabilities[wrong, predictions[wrong]]
    shown = wrong[np.argsort(-confidence, kind="stable")][:misclassified_shown]
    titles = [f"true: {ev.class_names[ev.labels[i]]} / pred: {ev.class_names[predictions[i]]} "
              f"(p={ev.probabilities[i, predictions[i]]:.2f})" for i in shown]
    plot_image_grid(data.test.images[shown].numpy(), titles, out / "misclassified.png", columns=8,
                    title=f"{model_path.parent.name}: {len(shown)} most confident of {len(wrong):,} mistakes")
    if args.json:
        print(json.dumps(ev.to_dict(), indent=2))
    else:
        print(format_evaluation(ev))
        print(f"\nwrote {out / 'confusion.png'}, {out / 'misclassified.png'}, {out / 'most_confused.csv'} "
              f"and {out / 'eval.json'}")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from ..runs import find_runs, read_metrics
    from ..viz import plot_curves

    runs = find_runs(args.runs)
    out = Path(args.out) if args.out else (runs[0] / "curves.png" if len(runs) == 1 else Path("curves.png"))
    plot_curves([(run.name, read_metrics(run)) for run in runs], out, title=args.title)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from ..data import DATASETS, user_cache_dir
    from ..download import download_dataset

    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    for name in names:
        dest = Path(args.dest) / name if args.dest else user_cache_dir() / name
        folder = download_dataset(DATASETS[name], dest)
        print(f"{name}: verified in {folder}")
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    """Where each dataset is found, and (with --verify) whether its checksums match."""
    from ..data import DATASETS, candidate_dirs, files_in
    from ..idx import sha256_of_decompressed

    bad = 0
    for name, spec in DATASETS.items():
        found = None
        for how, folder in candidate_dirs(name, args.data_dir):
            files = files_in(folder, spec)
            status = "found" if files else "absent"
            print(f"{name:<14} {how:<15} {folder}  {status}")
            if files and found is None:
                found = files
        if found and args.verify:
            for key, path in found.items():
                ok = sha256_of_decompressed(path) == spec.files[key].sha256
                bad += not ok
                print(f"  {'ok ' if ok else 'BAD'} {path}")
    if bad:
        from ..errors import DataError

        raise DataError(f"{bad} file(s) do not match their published checksums; delete them and download again")
    return EXIT_OK


# Further command groups, each a module here with register(subparsers).
COMMAND_MODULES: list[str] = ["speed", "explore", "use"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lenet", description="LeNet from Dive into Deep Learning, as a tool.")
    parser.add_argument("--version", action="version", version=f"lenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)

    p = sub.add_parser("summary", help="layer table: output shapes, parameters, multiply-adds")
    p.add_argument("target", metavar="MODEL_OR_PRESET", help="model name, preset, run dir, model or config file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("models", help="list the registered architectures")
    p.add_argument("pattern", nargs="?", default="*", help="glob filter (default: *)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("eval", help="test accuracy, per-class accuracy and a confusion matrix")
    p.add_argument("target", metavar="RUN_OR_MODEL")
    p.add_argument("--data-dir", help="folder holding the dataset (default: search)")
    p.add_argument("--device", default="auto", help="(default: auto)")
    p.add_argument("--out", help="folder for confusion.png and eval.json (default: the run directory)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="curves of one or several runs on one figure")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", help="PNG path (default: RUN/curves.png for one run, ./curves.png for several)")
    p.add_argument("--title")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("download", help="download a dataset from its official mirrors, verified")
    p.add_argument("dataset", nargs="?", default="fashion-mnist", choices=["fashion-mnist", "mnist", "all"])
    p.add_argument("--dest", help="parent folder (default: the user cache, ~/.cache/lenet/datasets)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("data", help="show where datasets are found; --verify checks checksums")
    p.add_argument("--data-dir")
    p.add_argument("--verify", action="store_true")
    p.set_defaults(func=cmd_data)

    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints and exits 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except LenetError as exc:
        print(f"lenet {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lenet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> None:
    sys.exit(main())
