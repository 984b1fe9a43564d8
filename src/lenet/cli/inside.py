"""Commands that look inside a trained network and at what it is shown: activations,
filters, augment. Each only parses its arguments and calls the library (use/inspection.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EXIT_OK, UsageError
from . import parse_sets, run_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("activations", help="feature maps of every conv block for some inputs, one PNG each",
                       description="For each input: the image, the prediction and every conv block's "
                                   "feature maps before and after pooling, one colour scale per layer.")
    p.add_argument("run", metavar="RUN_OR_MODEL")
    pick = p.add_argument_group("inputs (default: --classes of all classes, --per-class 1)")
    pick.add_argument("--classes", nargs="+", metavar="CLASS",
                      help="class names, aliases (sweater) or indices; the first --per-class test images of each")
    pick.add_argument("--per-class", type=int, default=1, help="test images per class (default: 1)")
    pick.add_argument("--index", type=int, nargs="+", metavar="N", help="test-set indices")
    pick.add_argument("--image", type=Path, nargs="+", metavar="FILE", help="your own pictures (any size, any colour)")
    p.add_argument("--data-dir", help="folder holding the dataset (default: the run's, else search)")
    p.add_argument("--out", type=Path, help="folder for the PNGs (default: RUN/activations)")
    p.set_defaults(func=cmd_activations)

    p = sub.add_parser("augment", help="a grid of training images and their augmented versions (PNG)",
                       description="What the network sees: training images, each followed by augmented "
                                   "versions drawn as the config's data.augment would draw them.")
    p.add_argument("--show", action="store_true", help="write the grid (the only action; kept for clarity)")
    p.add_argument("--preset", default=None, help="a recipe whose augmentation to show (default: d2l)")
    p.add_argument("--augment", default=None, help="augmentations to show, e.g. crop,flip,affine,erase")
    p.add_argument("--config", type=Path, help="a YAML or TOML config file instead of a preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run", metavar="RUN_OR_MODEL", help="a trained run's config instead")
    p.add_argument("--images", type=int, default=8, help="training images, one per row (default: 8)")
    p.add_argument("--versions", type=int, default=5, help="augmented versions of each (default: 5)")
    p.add_argument("--data-dir", help="folder holding the dataset (default: search)")
    p.add_argument("--out", type=Path, default=Path("runs/augment.png"), help="PNG path (default: runs/augment.png)")
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser("filters", help="the learned conv kernels as images")
    p.add_argument("run", metavar="RUN_OR_MODEL")
    p.add_argument("--out", type=Path, help="PNG path (default: RUN/filters.png)")
    p.set_defaults(func=cmd_filters)


def cmd_activations(args: argparse.Namespace) -> int:
    from ..use import inspection

    paths = inspection.write_activations(run_arg(args.run), classes=args.classes, per_class=args.per_class,
                                      indices=args.index, images=args.image, data_dir=args.data_dir,
                                      out=args.out)
    for path in paths:
        print(f"wrote {path}")
    return EXIT_OK


def cmd_augment(args: argparse.Namespace) -> int:
    from ..api import config
    from ..use.figures import save_figure
    from ..use.inspection import augment_figure

    if args.images < 1 or args.versions < 1:
        raise UsageError("--images and --versions must be at least 1")
    if args.run:
        target = run_arg(args.run)
    else:
        preset = args.preset or (None if args.config else "d2l")
        target = config(preset, file=args.config, set=parse_sets(args.overrides), augment=args.augment)
    path = save_figure(augment_figure(target, args.images, args.versions, data_dir=args.data_dir), args.out)
    print(f"wrote {path}")
    return EXIT_OK


def cmd_filters(args: argparse.Namespace) -> int:
    from ..use import inspection

    print(f"wrote {inspection.write_filters(run_arg(args.run), args.out)}")
    return EXIT_OK
