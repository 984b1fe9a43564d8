"""`lenet bench`: training and evaluation speed of a recipe on this machine."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time training and evaluation of a preset on this device")
    from ..configuration.presets import PRESETS

    p.add_argument("--preset", default="d2l", help=f"recipe to time: {' | '.join(PRESETS)} (default: d2l)")
    p.add_argument("--config", help="YAML/TOML config file instead of a preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs at most (default: 1, or the preset's with --target)")
    p.add_argument("--target", type=float, default=None, help="stop when test accuracy reaches this; report time to it")
    p.add_argument("--device", default=None, help="auto | cpu | cuda[:N] | mps (default: auto)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", action="store_true", help="one JSON object, for machines")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..experiments.bench import bench, format_bench
    from ..configuration.build import build_config

    epochs = args.epochs if args.epochs is not None else (None if args.target else 1)
    cfg = build_config(None if args.config else args.preset, args.config, args.overrides,
                       {"train.epochs": epochs, "device": args.device, "data.data_dir": args.data_dir})
    result = bench(cfg, target=args.target)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_bench(result))
    return EXIT_OK
