"""A bounded load test of `lenet serve`: a fixed number of POST /predict, a fixed concurrency.

Starts the server on 127.0.0.1 (a free port) in a child process, sends REQUESTS uploads
of real test images (PNG) from CONCURRENCY threads, each with its own connection, and
prints latency percentiles, throughput and the number of errors. Nothing but 127.0.0.1
is contacted, and the run stops at --deadline seconds whatever is left.

    python benchmarks/serve_load.py runs/keras-v2-mnist [--requests 400] [--concurrency 16]
    python benchmarks/serve_load.py --url http://127.0.0.1:8000/   # a server already running
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import numpy as np


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    completed: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update({f"p{q}_ms": round(self.percentile(q), 2) for q in (50, 90, 99)})
        out["max_ms"] = round(max(self.latencies_ms), 2) if self.latencies_ms else None
        out["requests_per_second"] = round(self.completed / max(self.wall_seconds, 1e-9), 1)
        return out

    def __str__(self) -> str:
        s = self.summary()
        return (f"{s['completed']}/{s['requests']} requests, concurrency {s['concurrency']}: "
                f"p50 {s['p50_ms']:.1f} ms, p90 {s['p90_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
                f"max {s['max_ms']:.1f} ms; {s['requests_per_second']:.0f} requests/s; errors {s['errors']} "
                f"(statuses {s['statuses']})")


def sample_pictures(dataset: str = "mnist", count: int = 64, data_dir: str | None = None) -> list[bytes]:
    """PNG bytes of the first ``count`` test images (or, without the dataset, seeded strokes)."""
    from PIL import Image, ImageDraw

    from lenet.data.datasets import load_dataset
    from lenet.errors import DataError

    try:
        images = load_dataset(dataset, data_dir, download=False).test.images[:count, 0].numpy()
    except DataError:
        rng = np.random.default_rng(0)
        images = []
        for _ in range(count):
            picture = Image.new("L", (28, 28), 0)
            points = [tuple(rng.integers(6, 22, size=2).tolist()) for _ in range(4)]
            ImageDraw.Draw(picture).line(points, fill=255, width=3)
            images.append(np.asarray(picture))
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def run_load(url: str, pictures: list[bytes], requests: int = 400, concurrency: int = 16,
             deadline_s: float = 120.0, timeout_s: float = 10.0) -> LoadReport:
    """POST ``requests`` pictures to ``url``/predict from ``concurrency`` threads."""
    import httpx

    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"serve_load only talks to this machine, not {host}")
    report = LoadReport(requests, concurrency)
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + deadline_s
    local = threading.local()

    def worker() -> None:
        local.client = httpx.Client(base_url=url, timeout=timeout_s)
        try:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                picture = pictures[i % len(pictures)]
                tic = time.perf_counter()
                try:
                    response = local.client.post("/predict", files={"image": (f"{i}.png", picture, "image/png")})
                    status = str(response.status_code)
                    ok = response.status_code == 200 and "label" in response.json()
                except httpx.HTTPError as exc:
                    status, ok = type(exc).__name__, False
                elapsed_ms = 1000 * (time.perf_counter() - tic)
                with lock:
                    report.completed += 1
                    report.errors += not ok
                    report.statuses[status] = report.statuses.get(status, 0) + 1
                    report.latencies_ms.append(elapsed_ms)
        finally:
            local.client.close()

    tic = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    report.wall_seconds = time.perf_counter() - tic
    report.errors += requests - report.completed  # cut off by the deadline
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="run directory or model.safetensors to serve")
    parser.add_argument("--url", help="an already running server on this machine instead of MODEL")
    parser.add_argument("--requests", type=int, default=400, help="total uploads (default: 400)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default: 16)")
    parser.add_argument("--deadline", type=float, default=120.0, help="stop after this many seconds (default: 120)")
    parser.add_argument("--data-dir", help="folder holding the dataset (default: search)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if not args.model and not args.url:
        parser.error("give MODEL or --url")

    def go(url: str, dataset: str) -> LoadReport:
        pictures = sample_pictures(dataset, data_dir=args.data_dir)
        run_load(url, pictures[:4], requests=2 * args.concurrency, concurrency=args.concurrency)  # warm-up
        return run_load(url, pictures, args.requests, args.concurrency, args.deadline)

    if args.url:
        import httpx

        dataset = httpx.get(args.url.rstrip("/") + "/model", timeout=5).json()["dataset"]
        report = go(args.url, dataset)
    else:
        from lenet.use.predict import Predictor
        from lenet.use.serve import ServerProcess

        dataset = Predictor(args.model).dataset
        with ServerProcess(args.model) as server:
            report = go(server.url, dataset)
    if args.json:
        print(json.dumps({**report.summary(), "cpu_count": os.cpu_count(), "platform": platform.platform()}))
    else:
        print(f"serve_load on {platform.processor() or platform.machine()} ({os.cpu_count()} cores): {report}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
