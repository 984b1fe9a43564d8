"""The chapter's models as int8: float and int8 test accuracy (PTQ and QAT), bytes of
weights, and the exported C's inference time per image on this CPU.

    python benchmarks/int8.py [--presets d2l keras-v2 best-mnist best-fashion-mnist]
                              [--out runs-int8] [--data-dir DIR] [--qat-epochs 1] [--repeats 3]

Trains each preset into OUT/PRESET (one torch thread; an existing run there is reused),
quantises it (PTQ, then QAT from the PTQ ranges: lenet.quantize(run, qat=True)), exports
the QAT model as C and times it: the example main.c compiled with -O2 classifies all 10,000
test images, minus the same program given no image (start-up), median of --repeats. Every
accuracy is one plain forward per test image (no TTA) on the full test set. Prints a
Markdown table, with the command and the CPU; nothing here is read back by lenet.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lenet
from lenet.data.datasets import load_dataset
from lenet.device import cpu_name
from lenet.store.models import MODEL_FILE
from lenet.training.qat import quantize
from lenet.use.c_export import compile_c, compiler, write_c


def trained_run(preset: str, out: Path, data_dir: str | None) -> Path:
    run = out / preset
    if (run / MODEL_FILE).is_file():
        return run
    cfg = lenet.config(preset, data_dir=data_dir, device="cpu",
                       set={"name": preset, "out": str(out), "train.progress": "never"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fastest on a shared 2-core machine (tests/models_fixture.py)
    try:
        lenet.train(cfg, out=out, exist_ok=True)
    finally:
        torch.set_num_threads(threads)
    return run


def c_microseconds(folder: Path, images: bytes, count: int, repeats: int) -> float:
    """Median microseconds per image of the compiled example, start-up subtracted."""
    with tempfile.TemporaryDirectory() as build:
        exe = compile_c(folder, Path(build))

        def seconds(data: bytes) -> float:
            tic = time.perf_counter()
            subprocess.run([str(exe)], input=data, capture_output=True, check=True)
            return time.perf_counter() - tic

        whole = statistics.median(seconds(images) for _ in range(repeats))
        empty = statistics.median(seconds(b"") for _ in range(repeats))
    return 1e6 * (whole - empty) / count


def code_bytes(folder: Path) -> int | None:
    """.text of lenet_model.c compiled with -Os (the code a board's flash holds besides the weights)."""
    if shutil.which("size") is None:
        return None
    with tempfile.TemporaryDirectory() as build:
        obj = Path(build) / "lenet_model.o"
        source = str(folder / "lenet_model.c")
        subprocess.run([*compiler(), "-std=c99", "-Os", "-c", "-o", str(obj), source], check=True)
        out = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True, check=True).stdout
    sections = dict(line.split()[:2] for line in out.splitlines() if line.startswith("."))
    return int(sections.get(".text", 0))  # the constants are .rodata: LENET_WEIGHT_BYTES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["d2l", "keras-v2", "best-mnist", "best-fashion-mnist"])
    parser.add_argument("--out", type=Path, default=Path("runs-int8"), help="(default: runs-int8)")
    parser.add_argument("--data-dir")
    parser.add_argument("--qat-epochs", type=int, default=1, help="(default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="C timings per model (default: 3)")
    args = parser.parse_args()
    if compiler() is None:
        sys.exit("benchmarks/int8.py: no C compiler (cc or $CC) to time the C code with")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in args.presets:
        run = trained_run(preset, args.out, args.data_dir)
        result = quantize(run, qat=True, epochs=args.qat_epochs, data_dir=args.data_dir, verbose=True)
        print(f"{preset}:\n{result}", flush=True)
        test = load_dataset(result.model.info["dataset"], args.data_dir).test
        folder = write_c(result.model, run / "c")
        micro = c_microseconds(folder, test.images.numpy().tobytes(), len(test), args.repeats)
        rows.append((preset, result, micro, code_bytes(folder)))
    print(f"\n$ python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"CPU: {cpu_name()}; {' '.join(compiler())} -O2; torch {torch.__version__}; Python "
          f"{platform.python_version()}; QAT {args.qat_epochs} epoch(s); full test sets, one forward per image\n")
    print("| preset | float32 | int8 PTQ | int8 QAT | weights float32 | weights int8 | C code (-Os) | C per image |")
    print("|---|---|---|---|---|---|---|---|")
    for preset, r, micro, code in rows:
        code_text = f"{code:,} B" if code is not None else "?"
        print(f"| {preset} | {r.float_accuracy:.4f} | {r.ptq_accuracy:.4f} | {r.qat_accuracy:.4f} | "
              f"{r.float_bytes:,} B | {r.bytes:,} B | {code_text} | {micro:,.0f} µs |")


if __name__ == "__main__":
    main()
