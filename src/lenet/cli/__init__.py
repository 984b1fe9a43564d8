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
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..errors import EXIT_INTERRUPTED, EXIT_OK, DataError, LenetError
from .parser import LenetParser, subparser

def _add_train(sub: argparse._SubParsersAction) -> None:
    from ..configuration.build import FLAGS
    from ..configuration.presets import PRESETS

    p = sub.add_parser("train", help="train a model into runs/<name>/",
                       description="Train from a preset or config file, with flag overrides.")
    p.add_argument("--preset", help=f"{' | '.join(PRESETS)} (default: d2l unless --config is given)")
    p.add_argument("--config", type=Path, help="YAML or TOML file; may name a preset as `preset: d2l`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set model.pool=max --set model.kernel_size=3")
    for flag in FLAGS:  # the same options lenet.config() takes as keyword arguments
        if flag.type is bool:
            p.add_argument(flag.cli, dest=flag.name, action="store_true", help=flag.help)
        else:
            p.add_argument(flag.cli, dest=flag.name, default=None, help=flag.help, type=flag.type,
                           choices=list(flag.choices) if flag.choices else None)
    p.add_argument("--exist-ok", action="store_true", help="write into an existing run directory")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..api import config
    from ..configuration.build import FLAGS
    from ..training.run import resume, train

    if args.resume is not None:
        # A run name prefix or "latest" works too; a path that is no run is resume's to explain.
        resume(args.resume if args.resume.exists() else _run_or_same(args.resume), verbose=True)
        return EXIT_OK
    options = {flag.name: getattr(args, flag.name) for flag in FLAGS}
    preset = args.preset or (None if args.config else "d2l")
    cfg = config(preset, file=args.config, set=parse_sets(args.overrides), **options)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return EXIT_OK
    train(cfg, out=cfg.out, exist_ok=args.exist_ok, verbose=True)
    return EXIT_OK


def run_arg(text: str | Path) -> Path:
    """A run or model argument: a path, "latest", or a run name prefix (runs.resolve_run);
    an inferred choice is said on stderr, so output stays machine-readable."""
    from ..store.runs import resolve_run

    path, note = resolve_run(text)
    if note:
        print(f"lenet: {note}", file=sys.stderr)
    return path


def _run_or_same(text: Path) -> Path:
    try:
        return run_arg(text)
    except LenetError:
        return text


def parse_sets(texts: Sequence[str]) -> dict[str, Any]:
    """--set KEY=VALUE texts as {dotted key: value} (values parsed as YAML scalars and lists)."""
    from ..configuration.build import parse_override

    return dict(parse_override(text) for text in texts)


def cmd_summary(args: argparse.Namespace) -> int:
    from ..api import architecture, summary

    try:
        architecture(args.target)
        target = args.target
    except LenetError as not_a_name:
        try:
            target = run_arg(args.target)  # a run by prefix or "latest"
        except LenetError:
            raise not_a_name from None
    table = summary(target)
    print(json.dumps(table.to_list(), indent=2) if args.json else table)
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from ..model.network import MODEL_DESCRIPTIONS, count_parameters, create_model, list_models

    for name in list_models(args.pattern):
        print(f"{name:<12} {count_parameters(create_model(name)):>8,} params  {MODEL_DESCRIPTIONS[name]}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from ..store.models import resolve_model_path
    from ..use.evaluation import evaluate

    model_path = resolve_model_path(run_arg(args.target))
    report = evaluate(model_path, data_dir=args.data_dir, device=args.device)
    written = report.save(Path(args.out) if args.out else model_path.parent)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
        print(f"\nwrote {', '.join(map(str, written[:-1]))} and {written[-1]}")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from ..store.runs import find_runs, read_metrics
    from ..use.figures import plot_curves

    runs = find_runs([run_arg(r) for r in args.runs])
    # Several runs: beside them (runs/curves-compared.png), never loose in the current folder.
    out = Path(args.out) if args.out else (runs[0] / "curves.png" if len(runs) == 1
                                           else runs[0].parent / "curves-compared.png")
    plot_curves([(run.name, read_metrics(run)) for run in runs], out, title=args.title)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from ..data.datasets import DATASETS, user_cache_dir
    from ..data.download import download_archive, download_dataset, unpack_archive

    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    for name in names:
        spec = DATASETS[name]
        dest = Path(args.dest) / name if args.dest else user_cache_dir() / name
        if spec.archive is not None:  # CIFAR-10: one archive, verified, then unpacked beside it
            folder = unpack_archive(download_archive(spec, dest), dest, spec.archive.folder)
            print(f"{name}: verified and unpacked in {folder}")
            continue
        folder = download_dataset(spec, dest)
        print(f"{name}: verified in {folder}")
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    """Where each dataset is found, and (with --verify) whether its checksums match."""
    from ..data.datasets import DATASETS, candidate_dirs, files_in
    from ..data.idx import sha256_of_decompressed

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
                try:  # bounded by the published size: a bigger file is not this dataset's
                    digest = sha256_of_decompressed(path, spec.files[key].size)
                except LenetError as exc:
                    digest = f"unreadable ({str(exc).split(': ', 1)[-1]})"
                ok = digest == spec.files[key].sha256
                bad += not ok
                expected = "" if ok else f" (expected {spec.files[key].sha256})"
                print(f"  {'ok ' if ok else 'BAD'} sha256 {digest}{expected}  {path}")
    if bad:
        raise DataError(f"{bad} file(s) do not match their published checksums; delete them and download again")
    return EXIT_OK


# Further command groups, each a module here with register(subparsers).
COMMAND_MODULES: list[str] = ["bench", "inside", "experiments", "use"]


def build_parser() -> argparse.ArgumentParser:
    from ..data.catalog import DATASETS

    parser = LenetParser(prog="lenet", description="LeNet from Dive into Deep Learning, as a tool.")
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
    p.add_argument("--out", help="PNG path (default: RUN/curves.png for one run, curves-compared.png beside "
                                 "several)")
    p.add_argument("--title")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("download", help="download a dataset from its official mirrors, verified")
    p.add_argument("dataset", nargs="?", default="fashion-mnist", choices=[*DATASETS, "all"],
                   help="(default: fashion-mnist)")
    p.add_argument("--dest", help="parent folder (default: the user cache, ~/.cache/lenet/datasets)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("data", help="show where datasets are found; --verify checks checksums")
    p.add_argument("--data-dir")
    p.add_argument("--verify", action="store_true")
    p.set_defaults(func=cmd_data)

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None, on_parsed: Callable[[], None] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)  # usage errors: argparse prints and exits 2
    if on_parsed is not None:
        on_parsed()
    if extras:  # reported by the subcommand they were given to, with its closest flags
        (subparser(parser, getattr(args, "command", None)) or parser).unrecognized(extras)
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
    """The `lenet` process: main() with the collector paused through the imports and
    frozen at exit (speed.process). main(), which tests call in-process, does none of this."""
    from ..speed import process

    process.collector_paused()
    code = main(on_parsed=process.collector_after_imports)
    process.collector_at_exit()
    sys.exit(code)
