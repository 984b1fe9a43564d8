"""How fast an image folder is read, first (decoding every picture) and again (from the cache).

    python benchmarks/decode.py [--count 60000] [--folder DIR]

Writes --count 28x28 grey PNGs into DIR/<class>/ (a temporary folder by default; an existing
DIR with pictures is reused): Fashion-MNIST's training and test pictures, repeated past
70,000, from ../shared/datasets/fashion-mnist, or random pictures where it is absent. Then
reads the folder as ``--data DIR`` does (reading.read_path: folder.read_folder, then the split),
once with an empty cache and once more, each in a fresh process so its peak RSS is its own.
Prints pictures/s and peak RSS per phase, against the decoded bytes and what the imports
alone take.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED_FASHION = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"


def source_pictures() -> tuple[np.ndarray, np.ndarray, str]:
    """(images (N, 28, 28), labels, where from)."""
    from lenet.data.idx import read_idx

    try:
        images = [read_idx(SHARED_FASHION / f"{part}-images-idx3-ubyte.gz") for part in ("train", "t10k")]
        labels = [read_idx(SHARED_FASHION / f"{part}-labels-idx1-ubyte.gz") for part in ("train", "t10k")]
        return np.concatenate(images), np.concatenate(labels), "Fashion-MNIST"
    except Exception:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8), np.arange(10_000) % 10, "random"


def write_folder(folder: Path, count: int) -> str:
    from PIL import Image

    from lenet.data.catalog import get_spec

    images, labels, origin = source_pictures()
    names = get_spec("fashion-mnist").class_names
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    for i in range(count):
        k = i % len(images)
        Image.fromarray(images[k]).save(folder / names[int(labels[k])] / f"{i:07d}.png")
    print(f"wrote {count:,} {origin} PNGs in {time.perf_counter() - tic:.0f} s to {folder}", flush=True)
    return origin


def peak_rss_kib() -> int:
    """This process's peak RSS: Linux's VmHWM, which reset_peak() can clear; elsewhere
    ru_maxrss (which keeps the parent's peak across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> None:
    try:  # "5" resets the peak RSS (Linux 4.0+): the parent's pictures are not this phase's
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def phase(folder: Path) -> None:
    """One read, in this process: a JSON line with its figures."""
    reset_peak()
    from lenet.data import reading, sources

    imports_kib = peak_rss_kib()
    options = sources.ReadOptions(progress=False)
    tic = time.perf_counter()
    found = reading.read_path(folder, options)
    seconds = time.perf_counter() - tic
    print(json.dumps({
        "seconds": seconds,
        "pictures": sum(len(labels) for _, labels in found.splits.values()),
        "decoded_bytes": sum(images.nbytes for images, _ in found.splits.values()),
        "peak_rss_kib": peak_rss_kib(),
        "imports_rss_kib": imports_kib,
        "cached": any("from the cache" in note for note in found.notes),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=60_000, help="pictures to write (default 60000)")
    parser.add_argument("--folder", type=Path, help="where to write them (default: a temporary folder)")
    parser.add_argument("--phase", type=Path, help=argparse.SUPPRESS)  # internal: one read of this folder
    args = parser.parse_args()
    if args.phase:
        return phase(args.phase)

    from lenet.device import cpu_name

    print(f"CPU: {cpu_name()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lenet-decode-") as temp:
        folder = args.folder or Path(temp) / "pictures"
        if not (folder.is_dir() and any(folder.iterdir())):
            write_folder(folder, args.count)
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(temp) / "cache")}  # empty: the first read decodes
        for name in ("first read (decodes)", "second read (cached)"):
            out = subprocess.run([sys.executable, __file__, "--phase", str(folder)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(f"{name}: {row['pictures']:,} pictures in {row['seconds']:.2f} s = "
                  f"{row['pictures'] / row['seconds']:,.0f} pictures/s; peak RSS {row['peak_rss_kib'] / 1024:,.0f} MiB "
                  f"(imports alone {row['imports_rss_kib'] / 1024:,.0f} MiB; decoded pixels "
                  f"{row['decoded_bytes'] / 2**20:,.0f} MiB); from the cache: {row['cached']}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
