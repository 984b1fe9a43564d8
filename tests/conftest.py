"""Shared fixtures: tiny but learnable IDX datasets written by the tests themselves."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings

from lenet.data.datasets import DATASETS
from lenet.data.idx import write_idx

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# CI gates a landing, so its fuzzing draws the same examples every run (a failure there is
# one anyone reproduces); runs between edits draw new ones and go on finding cases.
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def _find_real_data(name: str) -> tuple[Path | None, list[str]]:
    """(the folder holding ``name``/, the places looked in), found as lenet finds data:
    LENET_DATA_DIR, ../shared/datasets beside the checkout, the user cache, and Debian's
    /usr/share/datasets (where scripts/train.sh may have installed Fashion-MNIST)."""
    from lenet.data.catalog import DEBIAN_DATASETS, get_spec
    from lenet.data.datasets import files_in, user_cache_dir

    places = [os.environ.get("LENET_DATA_DIR"), SHARED_DATA, user_cache_dir(), DEBIAN_DATASETS]
    looked = []
    for root in places:
        if root:
            looked.append(str(Path(root) / name))
            if files_in(Path(root) / name, get_spec(name)):
                return Path(root), looked
    return None, looked


# Test files whose tests run on one xdist worker, one after another (scripts/test.sh:
# --dist loadgroup): each starts Ray clusters, two at once contend for 2 cores and
# share /tmp/ray/ray_current_cluster. Their modules also carry xdist_group("ray"), but
# xdist 3.8 groups by a suffix it writes into item._nodeid, which pytest 9 no longer
# reads: the groups were lost, and a 2-node test once found its address file gone
# because another worker's Ray had replaced it. The scheduler below groups by file.
SHARED_WORKER = {"tests/test_ray.py": "ray", "tests/test_ray_cluster.py": "ray"}


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None  # xdist's own
    from xdist.scheduler import LoadGroupScheduling

    class FileGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SHARED_WORKER.get(nodeid.split("::", 1)[0]) or super()._split_scope(nodeid)

    return FileGroups(config, log)


# Found at import, before any fixture isolates the environment (.ci/run points
# LENET_DATA_DIR at the real data; a new user's machine may have only Debian's copy).
REAL_DATA = {name: _find_real_data(name) for name in DATASETS}
HOW_TO_GET = {
    "fashion-mnist": "`lenet download fashion-mnist` (or `apt-get install dataset-fashion-mnist`)",
    "mnist": "`lenet download mnist` (needs the internet: Debian ships no MNIST)",
}


def real_data(name: str) -> Path:
    """The folder holding the real ``name``/ (for --data-dir), or skip saying how to get it
    (under LENET_REQUIRE_REAL_DATA=1, set by .ci/run, a missing dataset fails instead)."""
    root, looked = REAL_DATA[name]
    if root is not None:
        return root
    message = (f"real {name} not found (looked in {', '.join(looked)}); to run this test: "
               f"{HOW_TO_GET[name]}, or point LENET_DATA_DIR at a folder with {name}/")
    if os.environ.get("LENET_REQUIRE_REAL_DATA"):
        pytest.fail(message)
    pytest.skip(message)


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images whose class shows as a bright bar at a class-specific place.

    Learnable in a few epochs by any LeNet variant, yet noisy enough that accuracy is
    not trivially 1.0 after one batch.
    """
    n = len(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row = 2 + 2 * int(label)  # rows 2..20, one bar per class
        images[i, row : row + 4, 4:24] = 230
    return images


class Payload:
    """Unpickling this runs code: it makes a directory, a harmless stand-in for what a
    hostile file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


class StoppedAfterEpoch2(Exception):
    """A run ended by stop_after_epoch_2."""


def stop_after_epoch_2(row: dict) -> None:
    """An on_epoch hook that ends a run after its second epoch, the way a killed process
    would: after that epoch's checkpoint, before the rest."""
    if row["epoch"] == 2:
        raise StoppedAfterEpoch2


def write_tiny_dataset(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0,
                       compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    spec = DATASETS["fashion-mnist"]
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = make_images(labels, rng)
        img_name = spec.files[f"{split}_images"].filename
        lbl_name = spec.files[f"{split}_labels"].filename
        if not compress:
            img_name, lbl_name = img_name.removesuffix(".gz"), lbl_name.removesuffix(".gz")
        write_idx(folder / img_name, images)
        write_idx(folder / lbl_name, labels)
    return folder


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    """A --data-dir with tiny fashion-mnist/ and mnist/ subfolders (same file names)."""
    root = tmp_path / "data"
    write_tiny_dataset(root / "fashion-mnist", seed=0)
    write_tiny_dataset(root / "mnist", seed=1)
    return root


@pytest.fixture(scope="session", autouse=True)
def _session_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What _isolated_environment does per test, for the fixtures that live longer (a
    module's reference run is made before any test's own environment exists)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("session-cache")))
        patch.setenv("LENET_NO_DOWNLOAD", "1")
        patch.setenv("LENET_CALIBRATE", "0")
        yield


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's cache or Debian's data folder, downloads, or writes outside tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # Debian's dataset-fashion-mnist may be installed on the machine (scripts/train.sh
    # installs it): tests see only the data they name.
    monkeypatch.setattr("lenet.data.datasets.DEBIAN_DATASETS", tmp_path / "usr-share-datasets")
    monkeypatch.setenv("LENET_NO_DOWNLOAD", "1")
    monkeypatch.delenv("LENET_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    # speed.calibrate's default: no test measures this machine's step times unless it says
    # so, so every test computes alike on any CPU (float32, whole batches); the speed
    # choice is tested by passing measurements explicitly (test_speed_policy.py).
    monkeypatch.setenv("LENET_CALIBRATE", "0")


@pytest.fixture
def two_threads():
    """Halves (lenet.speed.halves) take one of torch's threads each: two for the test, whatever
    this machine has."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def real_data_dir() -> Path:
    """The folder holding the real Fashion-MNIST (skipped, with how to get it, where absent)."""
    return real_data("fashion-mnist")


@pytest.fixture
def real_mnist_dir() -> Path:
    """The folder holding the real MNIST (skipped, with how to get it, where absent)."""
    return real_data("mnist")


@contextlib.contextmanager
def run_locked_elsewhere(run_dir: Path) -> Iterator[subprocess.Popen]:
    """Another process holds ``run_dir``'s lock, as a second lenet would while training it
    (a lock held in this process would not count: lenet's lock is re-entrant in-process)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'pid {os.getpid()} (test)'.encode()); "
              "print('locked', flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(run_dir / ".lock")], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Every test computes on one thread. The tests train on a few hundred 28x28 images,
    where a second thread only adds synchronisation: measured on the 2-core machine, the
    quick suite took 90 s with torch's default of 2 threads (and over 6 minutes when the
    machine was busy, threads waiting on each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
