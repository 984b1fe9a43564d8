"""TensorBoard scalars: every run on disk writes them, a resumed run shows each epoch
once, and a missing tensorboard package is one clear line, not a failure."""

from __future__ import annotations

import builtins
import json
import time
from pathlib import Path

import pytest

from lenet.store import tracking
from lenet.api import config
from lenet.cli import main
from lenet.errors import Interrupted
from lenet.training.run import resume, train


def tiny_config(data_dir: Path, **changes):
    return config("d2l", set={"data.data_dir": str(data_dir), "train.epochs": 3, "train.batch_size": 64,
                              "data.val_split": 0.2, **changes})


def test_every_epoch_is_a_scalar_under_the_names_tensorboard_groups(tiny_data_dir, tmp_path):
    run = train(tiny_config(tiny_data_dir, name="tb"), out=tmp_path / "runs")
    scalars = tracking.read_scalars(run.run_dir)
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    for key, tag in (("train_loss", "loss/train"), ("val_accuracy", "accuracy/val"),
                     ("test_accuracy", "accuracy/test"), ("lr", "lr"),
                     ("examples_per_second", "speed/examples_per_second")):
        assert [step for step, _ in scalars[tag]] == [1, 2, 3]
        assert [value for _, value in scalars[tag]] == pytest.approx([r[key] for r in rows], rel=1e-6)


def test_a_resumed_runs_event_file_sorts_after_the_earlier_ones(tmp_path):
    """TensorBoard reads event files in name order; names start with whole seconds."""
    now = int(time.time())
    (tmp_path / f"events.out.tfevents.{now}.host.1.9").write_bytes(b"")
    tracking.after_earlier_events(tmp_path)
    assert time.time() >= now + 1
    tic = time.time()
    tracking.after_earlier_events(tmp_path / "nothing-here")  # no earlier files: no wait
    assert time.time() - tic < 0.1


def test_a_resumed_run_shows_each_epoch_once(tiny_data_dir, tmp_path):
    cfg = tiny_config(tiny_data_dir, name="tb", **{"train.epochs": 4})

    def interrupt(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # a Ctrl-C right after epoch 2's checkpoint and scalars

    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "runs", on_epoch=interrupt)
    run_dir = tmp_path / "runs" / "tb"
    assert [s for s, _ in tracking.read_scalars(run_dir)["loss/train"]] == [1, 2]
    resume(run_dir)
    scalars = tracking.read_scalars(run_dir)
    assert [s for s, _ in scalars["loss/train"]] == [1, 2, 3, 4]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [v for _, v in scalars["loss/train"]] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)


@pytest.fixture
def no_tensorboard(monkeypatch):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    monkeypatch.setattr(tracking, "_said_missing", False)


def test_without_tensorboard_a_run_that_did_not_ask_says_nothing(tiny_data_dir, tmp_path, no_tensorboard, capsys):
    """TensorBoard is not part of the base install: the main job's first screen must not
    warn about a package nobody asked for."""
    assert main(["train", "--data-dir", str(tiny_data_dir), "--epochs", "1", "--batch-size", "64",
                 "--name", "quiet", "--out", str(tmp_path / "runs")]) == 0
    said = capsys.readouterr()
    assert "epoch 1/1" in said.out and "TensorBoard" not in said.out + said.err
    run_dir = tmp_path / "runs" / "quiet"
    assert not list(run_dir.glob("events.out.tfevents.*"))
    assert "TensorBoard" not in (run_dir / "train.log").read_text()


def test_without_tensorboard_a_run_that_asked_trains_and_says_so_once(tiny_data_dir, tmp_path, no_tensorboard,
                                                                      monkeypatch, capsys):
    asked = {"train.epochs": 1, "train.tensorboard": True}
    first = train(tiny_config(tiny_data_dir, name="a", **asked), out=tmp_path / "runs")
    second = train(tiny_config(tiny_data_dir, name="b", **asked), out=tmp_path / "runs")
    err = capsys.readouterr().err
    assert err.count("TensorBoard scalars are not written") == 1 and "pip install tensorboard" in err
    # The CLI (verbose, as a new process would be): still one line on the terminal, not
    # one on stderr and its echo among the epoch lines.
    monkeypatch.setattr(tracking, "_said_missing", False)
    assert main(["train", "--data-dir", str(tiny_data_dir), "--epochs", "1", "--batch-size", "64",
                 "--set", "train.tensorboard=true", "--name", "c", "--out", str(tmp_path / "runs")]) == 0
    said = capsys.readouterr()
    assert "epoch 1/1" in said.out and "TensorBoard" not in said.out
    assert said.err.count("TensorBoard scalars are not written") == 1
    for run in (first, second):
        assert run.status == "finished" and not list(run.run_dir.glob("events.out.tfevents.*"))
        assert tracking.MISSING in (run.run_dir / "train.log").read_text()


def test_tensorboard_can_be_turned_off(tiny_data_dir, tmp_path):
    run = train(tiny_config(tiny_data_dir, name="off", **{"train.epochs": 1, "train.tensorboard": False}),
                out=tmp_path / "runs")
    assert run.status == "finished" and not list(run.run_dir.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_parallel_sweep_without_tensorboard_says_so_once_not_once_per_worker(tiny_data_dir, tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    # A `tensorboard` that cannot be imported, first on the path of the sweep and of the
    # workers it spawns (they inherit the environment, not this process's monkeypatches).
    fake = tmp_path / "no-tensorboard" / "tensorboard"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no tensorboard in this test')\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "quiet", "base": "d2l", "seeds": 1,
                                    "common": {"train.epochs": 1, "train.batch_size": 64, "train.tensorboard": True,
                                               "data.data_dir": str(tiny_data_dir)},
                                    "grid": {"model.pool": ["avg", "max"]}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "lenet", "sweep", str(spec), "--jobs", "2", "--out",
                           str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("TensorBoard scalars are not written") == 1, done.stderr
    logs = [p.read_text() for p in (tmp_path / "runs" / "quiet").glob("pool=*/train.log")]
    assert len(logs) == 2 and all(tracking.MISSING in log for log in logs)
