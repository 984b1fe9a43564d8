"""Every GPU path of lenet, measured in one run on one GPU.

    python benchmarks/gpu.py --data-dir DIR [--out results.json] [--group 64]

1. the plain PyTorch loop (benchmarks/plain_loop.py) on the same GPU: the baseline
2. the d2l recipe, 10 epochs, by each path: default (eager), --channels-last, --amp,
   --cuda-graphs, --cuda-graphs --amp, --compile: training examples/s, the 10 epochs'
   training seconds (evaluation excluded, the first epoch's warm-up, recording or
   compiling included), and the test accuracy
3. speedrun-mnist to 0.99 and speedrun-fashion-mnist to 0.91: training seconds to
   the target (lenet bench --target), eager and with --cuda-graphs
4. --group same-shaped d2l runs (seeds) trained together against one alone: examples/s
5. where the time of one eager step goes (torch.profiler, the 12 largest costs)

Prints a table and writes every figure, with the GPU, driver and versions, as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plain_loop  # noqa: E402

DEVICE = "cuda"  # --device cpu: a smoke run of this script where there is no GPU

import lenet  # noqa: E402
from lenet.experiments.bench import bench  # noqa: E402
from lenet.data.datasets import load_dataset  # noqa: E402


def d2l_path(data, epochs: int, **switches) -> dict:
    cfg = lenet.config("d2l", epochs=epochs, device=DEVICE, set={"train.progress": "never"}, **switches)
    tic = time.perf_counter()
    run = lenet.train(cfg, data=data)
    wall = time.perf_counter() - tic
    seconds = [r["epoch_seconds"] for r in run.history]
    steady = sum(seconds[1:]) / (len(seconds) - 1) if len(seconds) > 1 else seconds[0]
    n = len(data.train)
    words = [f"--{k.replace('_', '-')}" + (f" {v}" if v is not True else "") for k, v in switches.items()]
    return {"path": " ".join(words) or "default", "epochs": len(seconds),
            "train_seconds": sum(seconds), "first_epoch_seconds": seconds[0],
            "examples_per_second": n * len(seconds) / sum(seconds), "steady_examples_per_second": n / steady,
            "test_accuracy": run.test_accuracy, "wall_seconds_with_eval": wall}


def speedrun(preset: str, target: float, data_dir: str, **switches) -> dict:
    cfg = lenet.config(preset, device=DEVICE, data_dir=data_dir, **switches)
    result = bench(cfg, target=target, eval_repeats=3)
    return {"preset": preset, "switches": sorted(switches), "target": target,
            "seconds_to_target": result.seconds_to_target, "epochs_run": result.epochs_run,
            "final_test_accuracy": result.final_test_accuracy, "examples_per_second": result.examples_per_second}


def grouped(data, k: int, epochs: int, **switches) -> dict:
    """K d2l runs (seeds 0..K-1) trained together, in memory (lenet.training.driver.fit)."""
    from lenet.store.recorder import Recorder
    from lenet.training.driver import fit

    cfgs = [lenet.config("d2l", epochs=epochs, device=DEVICE, seed=s, set={"train.progress": "never"}, **switches)
            for s in range(k)]
    tic = time.perf_counter()
    runs = fit(cfgs, [Recorder(None) for _ in cfgs], data=data)
    wall = time.perf_counter() - tic
    # epoch_seconds of a grouped run is the group's epoch time shared by K
    group_seconds = sum(r["epoch_seconds"] for r in runs[0].history) * k
    accs = [r.test_accuracy for r in runs if r.test_accuracy is not None]
    return {"models": k, "epochs": epochs, "switches": sorted(switches),
            "examples_per_second": len(data.train) * epochs * k / group_seconds, "train_seconds": group_seconds,
            "wall_seconds": wall, "test_accuracy_min": min(accs), "test_accuracy_max": max(accs)}


def profile_group(data, k: int) -> str:
    """Where one epoch of K models trained together spends its GPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        grouped(data, k, 1)
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12)


def profile_step(data) -> str:
    from torch.profiler import ProfilerActivity, profile

    cfg = lenet.config("d2l", epochs=1, device=DEVICE, set={"train.progress": "never"})
    from lenet.data.datasets import prepare_data
    from lenet.training.loop import EpochSettings, EpochState, StopFlag, train_one_epoch
    from lenet.model.network import LeNet
    from lenet.training.learners import Learner

    device = torch.device(DEVICE)
    prepared = prepare_data(cfg, device, data)
    from lenet.speed.policy import resolve_speed

    speed = resolve_speed(cfg.speed, device, batch_size=cfg.train.batch_size)
    learner = Learner(LeNet(cfg.model).to(device), cfg, 235, speed)
    order = torch.randperm(prepared.n_train, device=device)
    s = EpochSettings(256, 60, lenet.Normalizer.for_config(cfg), 50, StopFlag())
    train_one_epoch(learner, prepared.dataset.train, order, EpochState.zeros((), device), s, 0)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_one_epoch(learner, prepared.dataset.train, order, EpochState.zeros((), device), s, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default=None, help="JSON file for every figure")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip: plain d2l speedrun group profile compile")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself (default: cuda)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs CUDA")
    info = {"gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(), "lenet": lenet.__version__}
    print(json.dumps(info), flush=True)
    data = load_dataset("fashion-mnist", args.data_dir)
    results: dict = {"info": info}

    if "plain" not in args.skip:
        results["plain"] = plain_loop.run("plain", epochs=min(3, args.epochs), device=DEVICE, data=data)
        print("plain loop", json.dumps(results["plain"]), flush=True)
    if "d2l" not in args.skip:
        paths = [{}, {"channels_last": True}, {"amp": True}]
        if DEVICE == "cuda":
            paths += [{"cuda_graphs": True}, {"cuda_graphs": True, "precision": "tf32"},
                      {"cuda_graphs": True, "amp": True}, {"cuda_graphs": True, "channels_last": True}]
        if "compile" not in args.skip:
            paths.append({"compile": True})
        results["d2l"] = []
        for switches in paths:
            row = d2l_path(data, args.epochs, **switches)
            results["d2l"].append(row)
            print("d2l", json.dumps(row), flush=True)
    if "speedrun" not in args.skip:
        results["speedrun"] = []
        for preset, target in (("speedrun-mnist", 0.99), ("speedrun-fashion-mnist", 0.91)):
            for switches in ({}, {"cuda_graphs": True}) if DEVICE == "cuda" else ({},):
                row = speedrun(preset, target, args.data_dir, **switches)
                results["speedrun"].append(row)
                print("speedrun", json.dumps(row), flush=True)
    if "group" not in args.skip:
        epochs = min(2, args.epochs)
        single = d2l_path(data, epochs)  # the default path, one run
        results["group"] = {"one": single, "many": []}
        for switches in ({}, {"amp": True}):
            many = grouped(data, args.group, epochs, **switches)
            many["ratio_to_one"] = many["examples_per_second"] / single["examples_per_second"]
            results["group"]["many"].append(many)
            print("group", json.dumps(many), flush=True)
        if "profile" not in args.skip and DEVICE == "cuda":
            results["group_profile"] = profile_group(data, args.group)
            print(results["group_profile"], flush=True)
    if "profile" not in args.skip:
        results["profile"] = profile_step(data)
        print(results["profile"], flush=True)

    print_table(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def print_table(results: dict) -> None:
    info = results["info"]
    print(f"\n{info['gpu']}, torch {info['torch']}, CUDA {info['cuda']}, Python {info['python']}")
    plain = results.get("plain")
    if plain:
        print(f"plain PyTorch loop (DataLoader, batch 256): {plain['examples_per_second']:,.0f} examples/s, "
              f"test acc {plain['test_accuracy']:.4f} after {plain['epochs']} epochs")
    for row in results.get("d2l", []):
        ratio = f"{row['examples_per_second'] / plain['examples_per_second']:.1f}x plain" if plain else ""
        print(f"d2l {row['path']:<26} {row['examples_per_second']:>11,.0f} ex/s (steady "
              f"{row['steady_examples_per_second']:>11,.0f})  {row['epochs']} epochs {row['train_seconds']:6.2f} s "
              f"(first {row['first_epoch_seconds']:.2f} s)  test acc {row['test_accuracy']:.4f}  {ratio}")
    for row in results.get("speedrun", []):
        reached = f"{row['seconds_to_target']:.2f} s" if row["seconds_to_target"] is not None else "not reached"
        print(f"{row['preset']:<24} {' '.join(row['switches']) or 'default':<12} to {row['target']}: {reached} "
              f"({row['epochs_run']} epochs, final {row['final_test_accuracy']:.4f})")
    group = results.get("group")
    for many in group["many"] if group else []:
        print(f"{many['models']} d2l runs together {' '.join(many['switches']) or 'default':<8} "
              f"{many['examples_per_second']:>11,.0f} ex/s in all vs one run (default path) "
              f"{group['one']['examples_per_second']:,.0f} ex/s = {many['ratio_to_one']:.1f}x")


if __name__ == "__main__":
    main()
