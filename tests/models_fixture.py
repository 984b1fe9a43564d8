"""Trained models for the tests that use one, made once per test session.

    mnist_model     keras-v2-scaled on real MNIST, 2 epochs (test accuracy ~0.98; about a minute on 2 CPU cores)
    fashion_model   keras-v2-scaled on real Fashion-MNIST, 1 epoch (~0.85)
    untrained_model a freshly initialised keras-v2-scaled MNIST model file: no data, no training

Import the fixtures into a test module (`from models_fixture import mnist_model`). A fixture
imported into several modules is a separate fixture in each, so the trained runs are kept
in this module, keyed by dataset: each is trained at most once per session.
LENET_TEST_MODELS=DIR keeps them in DIR across sessions (handy while editing tests).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import torch

from lenet.store.models import MODEL_FILE, save_model
from lenet.configuration.build import build_config
from lenet.data.datasets import get_spec
from lenet.model.network import LeNet

EPOCHS = {"mnist": 2, "fashion-mnist": 1}
_trained: dict[str, Path] = {}


def require_real_data(dataset: str) -> Path:
    """The folder holding the real ``dataset``, or skip saying how to get it (conftest.real_data)."""
    from conftest import real_data

    return real_data(dataset)


def trained_model(dataset: str, base: Path) -> Path:
    """The run directory of keras-v2-scaled trained on real ``dataset`` (trained on first use)."""
    if dataset in _trained:
        return _trained[dataset]
    data_dir = require_real_data(dataset)
    keep = os.environ.get("LENET_TEST_MODELS")
    out = Path(keep) if keep else base
    out.mkdir(parents=True, exist_ok=True)
    name = f"keras-v2-scaled-{dataset}-{EPOCHS[dataset]}ep"
    # Test workers (pytest -n) share ``base``: the first trains, the others wait for it.
    with open(out / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _train_once(out, name, dataset, data_dir)
    _trained[dataset] = out / name
    return out / name


def _train_once(out: Path, name: str, dataset: str, data_dir: Path) -> None:
    from lenet.training.run import train

    if not (out / name / MODEL_FILE).is_file():
        cfg = build_config("keras-v2-scaled", overrides=[
            f"data.dataset={dataset}", f"data.data_dir={data_dir}", f"train.epochs={EPOCHS[dataset]}",
            "device=cpu", "train.progress=never", f"out={out}", f"name={name}"])
        # One torch thread: measured on a 2-core machine shared with other jobs, one epoch of
        # Fashion-MNIST took 35 s with one thread and 167 s with two (threads waiting on each other).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train(cfg, out=out, exist_ok=True)
        finally:
            torch.set_num_threads(threads)


def shared_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder all test workers of this session see (pytest -n: each worker's base
    temp is a subfolder of the session's), so each model is trained once."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "trained-models"


@pytest.fixture(scope="session")
def mnist_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_model("mnist", shared_models_dir(tmp_path_factory))


@pytest.fixture(scope="session")
def fashion_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_model("fashion-mnist", shared_models_dir(tmp_path_factory))


def write_untrained(path: Path, dataset: str = "mnist") -> Path:
    cfg = build_config("keras-v2-scaled", overrides=[f"data.dataset={dataset}", "device=cpu"])
    path.mkdir(parents=True, exist_ok=True)
    save_model(path / MODEL_FILE, LeNet(cfg.model).eval(), cfg, get_spec(dataset).class_names,
               extra={"test_accuracy": None})
    return path


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained(tmp_path_factory.mktemp("untrained") / "run")
