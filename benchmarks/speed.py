"""How fast lenet trains the d2l recipe on this CPU, against the loops people write.

    python benchmarks/speed.py [--data-dir DIR] [--repeats 3] [--epochs 2] [--process-epochs 3]
                               [--accuracy-epochs 10] [--accuracy-paths PATH...] [--out speed.json]

In one run, on one machine, for each path:

    plain          a hand-written loop: TensorDataset of float tensors, DataLoader(batch
                   256, shuffle=True), the book's LeNet-5 and SGD (benchmarks/plain_loop.py)
    book           the book's own loop: per-sample PIL Dataset, 4 DataLoader workers
    lenet default  `lenet train --preset d2l`, as it chooses for this machine
    lenet no halves  the default without two halves at once (lenet/halves.py): each
                   operation split across the threads, as PyTorch does
    lenet fp32     --precision fp32, micro-batches and halves as measured for float32
    lenet fp32 no halves  --precision fp32 without halves: the default of the previous
                   release on a CPU where bf16 does not pay
    lenet fp32 unfused  --precision fp32 without the fused layers (fused.py): the
                   model's own conv, pool and flatten modules
    lenet fp32 whole batches  lenet 0.2's default on a CPU where bf16 does not pay:
                   float32, channels-last, whole batches, evaluation in batches of 2,048,
                   no fused layers
                   (its SGD's 1.3 s import of torch._dynamo is not put back)
    lenet fp32 contiguous   the default of lenet 0.1: float32, NCHW layout, whole batches
    lenet --precision bf16  bfloat16 autocast, whatever the hardware
    lenet --compile         torch.compile on the CPU (pays its compile time)

1. examples/s of training (evaluation excluded): lenet's paths in this process, the
   baselines from their own whole-process runs (2.), so that lenet's process-wide
   malloc setting (runtime.tune_cpu_allocator) does not reach them; the paths take
   turns in each repetition, so a burst of load elsewhere hits them all; median of
   --repeats
2. whole-process seconds for --process-epochs epochs (start-up, data, training,
   evaluation, files), each path its own process; median of --repeats
3. test accuracy after --accuracy-epochs epochs (once per path; 0 skips)
4. each path's ratios to the plain loop paired within each repetition, their median
   and range: this machine's speed can shift for minutes at a time, and a pair shares
   the shift

Prints the CPU, its features, torch and the ratios to the plain loop.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plain_loop  # noqa: E402

import lenet  # noqa: E402
from lenet.device import cpu_flags, cpu_name  # noqa: E402
from lenet.speed.calibration import cpu_speedups  # noqa: E402
from lenet.speed.choice import Speed  # noqa: E402
from lenet.speed.policy import fast_bf16_hardware  # noqa: E402

HERE = Path(__file__).resolve().parent
LENET_PATHS = {
    "lenet default": {},
    "lenet no halves": {"set": {"speed.parallel_halves": False}},
    "lenet fp32": {"precision": "fp32"},
    "lenet fp32 no halves": {"precision": "fp32", "set": {"speed.parallel_halves": False}},
    "lenet fp32 unfused": {"precision": "fp32", "set": {"speed.fused_layers": False}},
    "lenet fp32 whole batches": {"precision": "fp32", "set": {"speed.micro_batch": 0, "train.eval_batch_size": 2048,
                                                              "speed.fused_layers": False}},
    "lenet fp32 contiguous": {"precision": "fp32", "set": {"speed.channels_last": False, "speed.micro_batch": 0,
                                                           "train.eval_batch_size": 2048}},
    "lenet --precision bf16": {"precision": "bf16"},
    "lenet --compile": {"compile": True},
}


def lenet_config(path: str, epochs: int, data_dir: str | None):
    options = dict(LENET_PATHS[path])
    extra = {"train.progress": "never", **options.pop("set", {})}
    return lenet.config("d2l", epochs=epochs, device="cpu", data_dir=data_dir, set=extra, **options)


def throughput(path: str, epochs: int, data, data_dir: str | None) -> tuple[float, float, dict]:
    """(examples/s, test accuracy, the speed choice) of one in-process run (the baselines'
    accuracy only: their speed comes from a process of their own, whole_process)."""
    if path in ("plain", "book"):
        result = plain_loop.run(path, epochs=epochs, data=data)
        return result["examples_per_second"], result["test_accuracy"], {}
    run = lenet.train(lenet_config(path, epochs, data_dir), data=data)
    seconds = sum(r["epoch_seconds"] for r in run.history)
    return len(data.train) * len(run.history) / seconds, run.test_accuracy, run.speed


def process_command(path: str, epochs: int, data_dir: str | None, out: str) -> list[str]:
    if path in ("plain", "book"):
        return [sys.executable, str(HERE / "plain_loop.py"), "--loader", path, "--epochs", str(epochs),
                *(["--data-dir", data_dir] if data_dir else [])]
    options = LENET_PATHS[path]
    flags = []
    if "precision" in options:
        flags += ["--precision", options["precision"]]
    if options.get("compile"):
        flags.append("--compile")
    for key, value in options.get("set", {}).items():
        flags += ["--set", f"{key}={str(value).lower()}"]
    return [sys.executable, "-m", "lenet", "train", "--preset", "d2l", "--epochs", str(epochs), "--device", "cpu",
            "--out", out, "--name", "speed", "--exist-ok", "--set", "train.progress=never", *flags,
            *(["--data-dir", data_dir] if data_dir else [])]


def whole_process(path: str, epochs: int, data_dir: str | None) -> tuple[float, float | None]:
    """(seconds, examples/s where the process reports it: the baselines' JSON line)."""
    with tempfile.TemporaryDirectory() as out:
        command = process_command(path, epochs, data_dir, out)
        tic = time.perf_counter()
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        seconds = time.perf_counter() - tic
    rate = json.loads(done.stdout.splitlines()[-1])["examples_per_second"] if path in ("plain", "book") else None
    return seconds, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="(default: 3; medians are reported)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per throughput run (default: 2)")
    parser.add_argument("--process-epochs", type=int, default=3, help="epochs per whole-process run (default: 3)")
    parser.add_argument("--accuracy-epochs", type=int, default=10, help="0: skip the accuracy runs (default: 10)")
    parser.add_argument("--paths", nargs="*", default=["plain", "book", *LENET_PATHS], help="(default: all)")
    parser.add_argument("--accuracy-paths", nargs="*", default=None,
                        help="paths whose --accuracy-epochs accuracy is measured (default: all of --paths)")
    parser.add_argument("--out", default=None, help="JSON file for every figure")
    args = parser.parse_args()

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})
    info = {"cpu": cpu_name(), "features": flags, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cpu_speedups_measured": cpu_speedups(fast_bf16_hardware())}
    print(json.dumps(info), flush=True)
    data = lenet.load_dataset("fashion-mnist", args.data_dir)
    rates: dict[str, list[float]] = {p: [] for p in args.paths}
    processes: dict[str, list[float]] = {p: [] for p in args.paths}
    speed_choice: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for path in args.paths:  # taking turns: each repetition measures every path once
            seconds, rate = whole_process(path, args.process_epochs, args.data_dir)
            if rate is None:
                rate, _, speed_choice[path] = throughput(path, args.epochs, data, args.data_dir)
            rates[path].append(rate)
            processes[path].append(seconds)
            print(f"repeat {repeat + 1}: {path:<24} {rate:>9,.0f} ex/s  process {processes[path][-1]:6.1f} s",
                  flush=True)
    accuracy = {}
    if args.accuracy_epochs:
        for path in args.accuracy_paths or args.paths:
            accuracy[path] = throughput(path, args.accuracy_epochs, data, args.data_dir)[1]
            print(f"accuracy after {args.accuracy_epochs} epochs: {path:<24} {accuracy[path]:.4f}", flush=True)

    results = {"info": info, "epochs": args.epochs, "process_epochs": args.process_epochs,
               "accuracy_epochs": args.accuracy_epochs, "paths": {}}
    plain_rate = statistics.median(rates["plain"]) if "plain" in rates else None
    plain_process = statistics.median(processes["plain"]) if "plain" in processes else None
    print(f"\n{info['cpu']}; {', '.join(flags) or 'no AVX-512'}; torch {info['torch']}, {info['threads']} threads; "
          f"medians of {args.repeats}")
    print(f"{'path':<26} {'examples/s':>11} {'vs plain':>9} {'process s':>10} {'vs plain':>9} "
          f"{'test acc':>9}  what it computed with")
    for path in args.paths:
        rate, seconds = statistics.median(rates[path]), statistics.median(processes[path])
        speed = speed_choice.get(path) or {}
        row = {"examples_per_second": rate, "all_examples_per_second": rates[path], "process_seconds": seconds,
               "all_process_seconds": processes[path], "test_accuracy": accuracy.get(path), "speed": speed}
        results["paths"][path] = row
        ratio = f"{rate / plain_rate:.2f}x" if plain_rate else ""
        process_ratio = f"{plain_process / seconds:.2f}x" if plain_process else ""  # >1: faster than plain
        acc = f"{accuracy[path]:.4f}" if path in accuracy else ""
        layout = Speed.from_dict(speed).describe(256) if speed else ""  # the d2l batch
        print(f"{path:<26} {rate:>11,.0f} {ratio:>9} {seconds:>10.1f} {process_ratio:>9} {acc:>9}  {layout}")
    if "plain" in args.paths and args.repeats > 1:
        paired(args.paths, rates, processes, results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def paired(paths: list[str], rates: dict[str, list[float]], processes: dict[str, list[float]],
           results: dict) -> None:
    """Each repetition's ratios to that repetition's plain loop, their median and range.
    A machine whose speed shifts between repetitions moves a path and the plain loop
    together within one, so these ratios are steadier than the medians' ratios above."""
    print("\npaired with the plain loop of the same repetition: median (range) over the repetitions")
    for path in paths:
        if path == "plain":
            continue
        rate = sorted(r / p for r, p in zip(rates[path], rates["plain"]))
        process = sorted(p / s for s, p in zip(processes[path], processes["plain"]))  # >1: faster than plain
        results["paths"][path]["paired"] = {"examples_per_second": rate, "process": process}
        print(f"{path:<26} examples/s {statistics.median(rate):.2f}x ({rate[0]:.2f}-{rate[-1]:.2f})   "
              f"process {statistics.median(process):.2f}x ({process[0]:.2f}-{process[-1]:.2f})")


if __name__ == "__main__":
    main()
