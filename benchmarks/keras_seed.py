"""The keras-v1 / keras-v2 presets against the Keras code they are named after, side by side.

    pip install keras==3.15.1    # this benchmark's only extra: Keras 3 on the torch backend, no TensorFlow
    python benchmarks/keras_seed.py [--versions v1 v2] [--seeds 0 1 2] [--epochs 10] [--threads 1]
                                    [--data-dir DIR] [--out keras_seed.json]

For each version and seed, each run in a process of its own, Keras and lenet taking turns:

    keras  the chapter's Keras code as written (the "seed"), with KERAS_BACKEND=torch:
           Sequential([Conv2D(6, 5, padding="same", activation="sigmoid"), AveragePooling2D(2),
           Conv2D(16, 5, activation="sigmoid"), AveragePooling2D(2), Flatten(), Dense(120, "sigmoid"),
           Dense(84, "sigmoid"), Dense(10, "softmax")]); compile("adam", "sparse_categorical_crossentropy");
           fit(x_train, y_train, validation_split=0.1, batch_size=64, epochs=10) on the raw 0-255
           pixels as floats. V2: ReLU, MaxPooling2D(2), Dropout(0.5) after Dense(120). Keras 3
           makes the pool size explicit (Keras 2's default, 2). Fashion-MNIST is read from the
           IDX files (lenet's loader) instead of keras.datasets, which downloads.
    lenet  lenet.train(lenet.config("keras-<version>", seed=...)), as this machine's defaults choose

Prints the CPU, then per version: test accuracy (mean and sample standard deviation over the
seeds, and each seed) and examples/s of training (validation excluded: Keras timed from an
epoch's start to its last batch, lenet as its metrics record it), side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTALL = "pip install keras==3.15.1"


def keras_model(version: str):
    """The seed's Sequential model (keras imported with the torch backend)."""
    import keras
    from keras import layers

    act = "sigmoid" if version == "v1" else "relu"
    pool = layers.AveragePooling2D if version == "v1" else layers.MaxPooling2D
    middle = [] if version == "v1" else [layers.Dropout(0.5)]
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(6, 5, padding="same", activation=act), pool(2),
        layers.Conv2D(16, 5, activation=act), pool(2),
        layers.Flatten(),
        layers.Dense(120, activation=act), *middle,
        layers.Dense(84, activation=act),
        layers.Dense(10, activation="softmax")])


def run_keras(version: str, seed: int, epochs: int, data_dir: str | None) -> dict:
    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    from lenet.data.datasets import load_dataset

    data = load_dataset("fashion-mnist", data_dir)
    # (N, 28, 28, 1) float32 of the raw 0..255 pixels, as the seed feeds them
    x_train = data.train.images.numpy().transpose(0, 2, 3, 1).astype("float32")
    x_test = data.test.images.numpy().transpose(0, 2, 3, 1).astype("float32")
    y_train, y_test = data.train.labels.numpy(), data.test.labels.numpy()

    class TrainingTime(keras.callbacks.Callback):
        """Seconds from each epoch's start to its last batch: the validation pass excluded."""

        def __init__(self):
            super().__init__()
            self.seconds, self.start, self.last = 0.0, 0.0, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.start = self.last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds += self.last - self.start

    keras.utils.set_random_seed(seed)
    model = keras_model(version)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = TrainingTime()
    history = model.fit(x_train, y_train, validation_split=0.1, batch_size=64, epochs=epochs, verbose=0,
                        callbacks=[timer])
    _, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    n_train = math.floor(len(x_train) * (1.0 - 0.1))  # the rows validation_split=0.1 leaves to training
    return {"test_accuracy": float(test_accuracy), "val_accuracy": float(history.history["val_accuracy"][-1]),
            "train_seconds": timer.seconds, "examples_per_second": n_train * epochs / timer.seconds,
            "keras": keras.__version__}


def run_lenet(version: str, seed: int, epochs: int, data_dir: str | None) -> dict:
    import lenet

    cfg = lenet.config(f"keras-{version}", seed=seed, epochs=epochs, data_dir=data_dir, device="cpu",
                       set={"train.progress": "never"})
    with tempfile.TemporaryDirectory() as out:
        run = lenet.train(cfg, out=out)
    rows = run.history
    seconds = sum(r["epoch_seconds"] for r in rows)
    return {"test_accuracy": run.test_accuracy, "val_accuracy": rows[-1]["val_accuracy"], "train_seconds": seconds,
            "examples_per_second": sum(r["examples"] for r in rows) / seconds,
            "speed": {k: v for k, v in run.speed.items() if k in ("precision", "micro_batch", "parallel_halves")}}


def one(args: argparse.Namespace) -> None:
    """One run in this process; prints its JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    runner = run_keras if args.one == "keras" else run_lenet
    result = runner(args.version, args.seed, args.epochs, args.data_dir)
    print(json.dumps({"code": args.one, "version": args.version, "seed": args.seed,
                      "threads": torch.get_num_threads(), **result}))


def spawn(code: str, version: str, seed: int, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--one", code, "--version", version, "--seed", str(seed),
            "--epochs", str(args.epochs)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--data-dir", args.data_dir] if args.data_dir else []
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{code} {version} seed {seed} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {code:5} {version} seed {seed}: test accuracy {result['test_accuracy']:.4f}, "
          f"{result['examples_per_second']:,.0f} examples/s", flush=True)
    return result


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def table(results: list[dict], versions: list[str]) -> str:
    lines = [f"{'version':8} {'code':16} {'test accuracy':18} {'per seed':26} {'examples/s':>10}"]
    for version in versions:
        means = {}
        for code, label in (("keras", "Keras seed"), ("lenet", f"lenet keras-{version}")):
            rows = [r for r in results if r["code"] == code and r["version"] == version]
            accuracies = [r["test_accuracy"] for r in rows]
            means[code] = statistics.mean(accuracies)
            speed = statistics.median(r["examples_per_second"] for r in rows)
            lines.append(f"{version.upper():8} {label:16} {mean_sd(accuracies):18} "
                         f"{' '.join(f'{a:.4f}' for a in accuracies):26} {speed:>10,.0f}")
        lines.append(f"{'':8} {'lenet - Keras':16} {means['lenet'] - means['keras']:+.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", choices=("v1", "v2"), default=["v1", "v2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="(the seed's: 10)")
    # One thread each by default: on a 2-core machine shared with other jobs, Keras's steps took
    # 71-570 ms with two threads waiting on each other and 11 ms with one.
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every run (default: 1; 0: torch's)")
    parser.add_argument("--data-dir", default=None, help="folder holding fashion-mnist/ (default: lenet's search)")
    parser.add_argument("--out", default=None, help="also write every run's numbers as JSON here")
    parser.add_argument("--one", choices=("keras", "lenet"), help=argparse.SUPPRESS)
    parser.add_argument("--version", default="v1", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if importlib.util.find_spec("keras") is None:
        print(f"keras_seed.py runs the chapter's Keras code, and Keras is not installed: {INSTALL}", file=sys.stderr)
        sys.exit(2)
    if args.one:
        one(args)
        return

    from lenet.device import cpu_name
    import torch

    print(f"{cpu_name()} ({platform.machine()}), {args.threads or torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}; {len(args.seeds)} seed(s) x {args.epochs} epochs", flush=True)
    results = []
    for version in args.versions:
        for seed in args.seeds:
            for code in ("keras", "lenet"):
                results.append(spawn(code, version, seed, args))
    print(f"\nKeras {results[0].get('keras', '?')} (torch backend) against lenet, Fashion-MNIST test accuracy "
          f"after {args.epochs} epochs:")
    print(table(results, args.versions))
    chosen = sorted({json.dumps(r["speed"], sort_keys=True) for r in results if r["code"] == "lenet"})
    print(f"lenet's speed choices (its defaults on this machine): {', '.join(chosen)}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
