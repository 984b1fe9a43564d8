"""Commands that use a trained model: predict, quantize, export, serve (parse, then call the library)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..errors import EXIT_OK, UsageError
from . import run_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify pictures (PNG, JPEG, ...) with a trained model",
                       description="Turn each picture into the form the model trained on (MNIST and Fashion-MNIST: "
                                   "28x28 grey, light on dark, cropped, centred, resized; own data and CIFAR-10: "
                                   "its channels, resized to its size) and print the most likely classes.")
    p.add_argument("model", metavar="MODEL", help="run directory or model.safetensors")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="picture files")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per picture (default: 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output: one JSON list")
    p.add_argument("--show-input", metavar="FILE", type=Path,
                   help="save the image the model saw as a PNG (several pictures: FILE-1.png, FILE-2.png, ...)")
    p.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                   help="negate the picture (MNIST framings only): auto = when the object is darker than "
                        "the background (default: auto)")
    p.add_argument("--device", default="cpu", help="(default: cpu)")
    p.set_defaults(func=cmd_predict)

    _add_quantize(sub)

    p = sub.add_parser("export", help="export a trained model: ONNX (float or int8) or plain C (int8), checked",
                       description="ONNX: a dynamic batch size, the class names and preprocessing constants in "
                                   "the metadata; onnxruntime is compared with PyTorch on test images. --int8 and "
                                   "--format c export the int8 model (model-int8.safetensors, made by `lenet "
                                   "quantize`; quantised on the spot where there is none), checked against the "
                                   "integer reference: onnxruntime must classify 99.9%% of the images alike, the "
                                   "compiled C must give every score bit for bit.")
    p.add_argument("model", metavar="MODEL", help="run directory, model.safetensors or model-int8.safetensors")
    p.add_argument("--format", dest="fmt", default="onnx", choices=["onnx", "c"],
                   help="onnx, or c: lenet_model.h, lenet_weights.h, lenet_model.c and main.c (default: onnx)")
    p.add_argument("--int8", action="store_true", help="the int8 model (always for --format c)")
    p.add_argument("--out", type=Path, help="output file (default: model.onnx or model-int8.onnx beside the model); "
                                            "for --format c a folder (default: c/ beside the model)")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's; 17 for --int8)")
    p.add_argument("--check-images", type=int, default=1000,
                   help="test images to check the export on; 0 = no check (default: 1000)")
    p.add_argument("--data-dir", help="folder holding the dataset, for the check (default: search)")
    p.add_argument("--max-stack-bytes", type=int, help="--format c: refuse a model whose lenet_predict needs more "
                                                       "stack (default: 65536)")
    p.add_argument("--max-flash-bytes", type=int, help="--format c: refuse a model whose constants need more "
                                                       "(default: 1048576)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="a web page and JSON API to try a model (FastAPI + uvicorn)",
                       description="Serve GET / (draw or drop a picture), POST /predict, GET /model, GET /healthz.")
    p.add_argument("model", metavar="MODEL", help="run directory or model.safetensors")
    p.add_argument("--host", default="127.0.0.1", help="(default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0 = any free port (default: 8000)")
    p.add_argument("--device", default="cpu", help="(default: cpu)")
    p.add_argument("--max-upload-mb", type=float, default=5.0, help="largest upload accepted (default: 5)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="largest picture accepted, width x height (default: 16777216 = 4096x4096)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="(default: info)")
    p.set_defaults(func=cmd_serve)


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def model_arg(text: str, pictures: list[str] | None = None) -> Path:
    """The MODEL argument: a run directory, a .safetensors file, "latest" or a run name
    prefix. A picture given where the model goes (arguments swapped) is said so."""
    path = Path(text)
    if path.is_file() and path.suffix.lower() in PICTURE_SUFFIXES:
        model_like = [p for p in pictures or [] if Path(p).is_dir() or p.endswith(".safetensors")]
        hint = f"; {model_like[0]} looks like the model: give it first" if model_like else ""
        raise UsageError(f"MODEL is {text}, a picture: the model (a run directory or .safetensors file) comes "
                         f"first, then the pictures, e.g. `lenet predict runs/NAME {text}`{hint}")
    return run_arg(text)


def _input_path(base: Path, index: int, count: int) -> Path:
    return base if count == 1 else base.with_name(f"{base.stem}-{index}{base.suffix or '.png'}")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..use.predict import ImageError, Predictor, save_input

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    model = model_arg(args.model, args.images)
    predictor = Predictor(model, args.device)
    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    results = predictor.predict_many(args.images, invert)
    records, failures = [], []
    for index, (path, result) in enumerate(zip(args.images, results, strict=True), start=1):
        if isinstance(result, ImageError):
            failures.append(result)
            records.append({"file": path, "error": str(result)})
            continue
        record = result.to_dict(top_k=args.top_k)
        if args.show_input:
            record["input_file"] = str(save_input(result.input, _input_path(args.show_input, index, len(results))))
        records.append(record)
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for record in records:
            if "error" in record:
                if len(records) > 1:  # a single failure is reported by main, once
                    print(f"lenet predict: error: {record['error']}", file=sys.stderr)
                continue
            note = "  (dark on light: inverted)" if record["inverted"] else ""
            print(f"{record['file']}{note}")
            for entry in record["top"]:
                print(f"  {entry['label']:<14} {100 * entry['probability']:6.2f}%")
            if "input_file" in record:
                print(f"  model input saved to {record['input_file']}")
    if failures:
        if len(args.images) == 1:
            raise failures[0]
        raise ImageError(f"{len(failures)} of {len(args.images)} pictures could not be classified (see above)")
    return EXIT_OK


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="int8 model of a trained run, float and int8 test accuracy side by side",
                       description="Post-training quantisation: int8 weights per output channel, int8 activations "
                                   "per tensor with ranges from training images, folded batch norm and "
                                   "preprocessing; written as model-int8.safetensors beside the model. --qat "
                                   "fine-tunes with the rounding simulated, for when the drop is too big.")
    p.add_argument("model", metavar="RUN", help="run directory or model.safetensors")
    p.add_argument("--qat", action="store_true", help="quantisation-aware fine-tuning after PTQ")
    p.add_argument("--epochs", type=int, help="QAT epochs over the training set (default: 1)")
    p.add_argument("--lr", type=float, help="QAT learning rate, Adam falling on a cosine (default: 1e-4)")
    p.add_argument("--calibration-images", type=int, default=1000,
                   help="training images whose activations set the int8 ranges (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="which calibration images, and QAT's batch order (default: 0)")
    p.add_argument("--out", type=Path, help="output file (default: model-int8.safetensors beside the model)")
    p.add_argument("--data-dir", help="folder holding the dataset (default: search)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..training.qat import quantize

    if not args.qat and (args.epochs is not None or args.lr is not None):
        raise UsageError("--epochs and --lr are QAT's: add --qat to fine-tune, or leave them out for PTQ alone")
    options = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    result = quantize(model_arg(args.model), qat=args.qat, calibration=args.calibration_images,
                      data_dir=args.data_dir, out=args.out, seed=args.seed, verbose=not args.json, **options)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    import sys

    from ..use.export import export

    bounds = {k: v for k, v in (("max_stack_bytes", args.max_stack_bytes), ("max_flash_bytes", args.max_flash_bytes))
              if v is not None}
    path, check = export(model_arg(args.model), args.fmt, args.out, args.opset, args.check_images, args.data_dir,
                         int8=args.int8, **bounds)
    if args.fmt == "c":
        print(f"wrote {path}/: lenet_model.h, lenet_weights.h, lenet_model.c, main.c (int8, integer arithmetic "
              "only; stack and flash bounds in lenet_model.h)")
    else:
        kind = "int8 ONNX (QDQ), input uint8 pixels" if args.int8 else "ONNX"
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB, {kind}, dynamic batch size; "
              "class names and preprocessing in the metadata)")
    if isinstance(check, str):
        print(f"lenet export: {check}", file=sys.stderr)
    elif check is not None:
        print(check)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from ..use.serve import run_server

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: a port is 0 to 65535 (0: any free port)")
    if not (math.isfinite(args.max_upload_mb) and 0 < args.max_upload_mb <= 1024):
        raise UsageError(f"--max-upload-mb {args.max_upload_mb}: give a size in MB above 0 and at most 1024")
    if args.max_pixels < 1:
        raise UsageError(f"--max-pixels {args.max_pixels}: give a positive number of pixels (width x height)")
    run_server(model_arg(args.model), args.host, args.port, args.device, log_level=args.log_level,
               max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    return EXIT_OK
