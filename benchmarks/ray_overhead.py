"""What running a sweep on Ray costs, against lenet's own process pool, on this machine.

    python benchmarks/ray_overhead.py [--data-dir DIR] [--runs 8] [--epochs 3] [--jobs 2] [--out FILE]

The same sweep (the d2l recipe on Fashion-MNIST, --runs seeds of --epochs epochs) in
one invocation, twice:

    local pool   lenet sweep --jobs N: N spawned processes, cores/N torch threads each
    local Ray    lenet sweep --backend ray: a Ray started here with this machine's cores,
                 one task per run asking for one CPU (one torch thread)

and prints the wall time of each, Ray's start-up on its own, and Ray's overhead per
run: (Ray's wall time - the pool's) / the pool's, with and without the start-up. The
issue's bound is 10%. Both write their runs to a temporary folder; the test accuracies
must agree run by run (the same seeds give the same numbers on either backend).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from lenet.experiments.cluster import connect
from lenet.device import cpu_name
from lenet.experiments.sweep import RayBackend, parse_spec, plan_sweep, run_sweep

BOUND = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("LENET_DATA_DIR"))
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()
    common = {"train.epochs": args.epochs, "train.progress": "never", "device": "cpu"}
    if args.data_dir:
        common["data.data_dir"] = str(Path(args.data_dir).resolve())
    spec = parse_spec({"name": "overhead", "base": "d2l", "seeds": args.runs, "common": common,
                       "variants": [{"name": "d2l"}], "include_base": False})
    print(f"{cpu_name()}; torch {torch.__version__}; Python {platform.python_version()}")
    print(f"{args.runs} runs of the d2l recipe, {args.epochs} epoch(s) each\n")
    quiet = lambda line: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        pool = run_sweep(plan_sweep(spec, Path(tmp) / "pool"), jobs=args.jobs, log=quiet)
        pool_s = time.perf_counter() - tic

        tic = time.perf_counter()
        connection = connect()  # a local Ray sized to this machine, as --backend ray starts it
        start_s = time.perf_counter() - tic
        try:
            ray_runs = run_sweep(plan_sweep(spec, Path(tmp) / "ray"), log=quiet, backend=RayBackend(log=quiet),
                                 together=False)
        finally:
            connection.shutdown()
        ray_s = time.perf_counter() - tic
    same = [a.test_accuracy for a in pool] == [b.test_accuracy for b in ray_runs]
    overhead = (ray_s - pool_s) / pool_s
    without_start = (ray_s - start_s - pool_s) / pool_s
    print(f"local pool (--jobs {args.jobs}):        {pool_s:7.1f} s  ({pool_s / args.runs:.1f} s per run)")
    print(f"local Ray (--backend ray):    {ray_s:7.1f} s  ({ray_s / args.runs:.1f} s per run), "
          f"of which starting Ray {start_s:.1f} s")
    print(f"Ray's overhead per run: {overhead:+.1%} ({without_start:+.1%} once Ray is running); "
          f"bound {BOUND:.0%}: {'within' if overhead < BOUND else 'OVER'}")
    print(f"same test accuracies run by run: {same}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "runs": args.runs,
            "epochs": args.epochs, "jobs": args.jobs, "pool_s": pool_s, "ray_s": ray_s, "ray_start_s": start_s,
            "overhead": overhead, "overhead_without_start": without_start, "same_accuracies": same}, indent=2))
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
