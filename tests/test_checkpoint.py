"""Checkpoints: what they hold, that a resume is exact, that nothing is lost (model files:
test_models.py).

Issue 5, "lenet never loses a run": every epoch ends in an atomic checkpoint; a kill,
one or two Ctrl-C or a full disk leaves a run that `--resume` finishes with bitwise
the same weights as an uninterrupted run; a file that is not ours is refused with a
one-paragraph message (never a traceback) and is never unpickled.

In-process runs: 540 train examples, batch 64 -> 9 steps per epoch, 3 epochs.
Subprocess runs: 720 train examples, batch 8 -> 90 steps (about half a second per epoch
on a busy 2-core machine), so a signal sent once the progress bar shows a step of an
epoch lands inside that epoch: the tests watch the bar, they never sleep blindly.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lenet.store.runs
import lenet.store.files
import lenet.training.progress
from conftest import Payload, write_tiny_dataset
from lenet.store.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from lenet.store.models import load_model, save_model
from lenet.cli import main
from lenet.configuration.build import build_config
from lenet.errors import Interrupted, RunError
from lenet.model.network import LeNet
from lenet.store.runs import write_metrics
from lenet.training.run import resume, train

TIMING = ("epoch_seconds", "examples_per_second")  # the only fields a resume may change


# --------------------------------------------------------------------------- helpers


def run_config(data_dir: Path, out: Path, name: str, *overrides: str):
    return build_config("keras-v2-scaled", overrides=[
        f"data.data_dir={data_dir}", f"out={out}", f"name={name}", "train.epochs=3", "device=cpu",
        "train.progress=never", *overrides])


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in metrics]


def assert_same_weights(run: Path, reference: Path) -> None:
    got, want = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the uninterrupted run"


def assert_resumed_exactly(run: Path, reference: Path) -> None:
    assert_same_weights(run, reference)
    assert [r["epoch"] for r in rows(run)] == [r["epoch"] for r in rows(reference)]  # each epoch once
    assert without_timing(rows(run)) == without_timing(rows(reference))


def stray_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Every run here computes on one thread, as the subprocesses (OMP_NUM_THREADS=1):
    the same kernels on one thread give the same bits in and out of this process, and a
    busy 2-core machine runs one thread faster than two that wait for each other (these
    two test files: 55 s against 148 s at a load average of 6)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_tiny_dataset(root / "fashion-mnist")
    return root


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run, and the epoch its checkpoint held after each epoch."""
    out = tmp_path_factory.mktemp("reference")
    checkpointed: list[int] = []
    result = train(run_config(data_dir, out, "reference"), out=out,
                   on_epoch=lambda row: checkpointed.append(load_checkpoint(out / "reference")["epoch"]))
    return result, checkpointed


@pytest.fixture
def finished_run(reference, tmp_path) -> Path:
    """A private copy of the reference run directory, free to damage."""
    return Path(shutil.copytree(reference[0].run_dir, tmp_path / "copy"))


# --------------------------------------------------------------------------- what a checkpoint holds


def test_a_checkpoint_after_every_epoch_holds_everything_needed_to_continue(reference):
    result, checkpointed = reference
    assert checkpointed == [1, 2, 3]  # written before on_epoch runs, i.e. before anything else can fail
    saved = load_checkpoint(result.run_dir)  # weights_only=True
    assert saved["epoch"] == 3 and saved["step"] == 0
    assert saved["metrics"] == rows(result.run_dir)
    assert saved["config"] == result.config.to_dict()
    model = result.model.state_dict()
    assert saved["model"].keys() == model.keys()
    assert all(torch.equal(saved["model"][k], model[k]) for k in model)
    assert saved["optimizer"]["state"], "Adam's moments must be saved, or a resume restarts them"
    # The lr schedule is a function of the step, so the optimiser's state is all there is:
    # Adam's own step count says 3 epochs of 9 steps were taken.
    assert all(int(s["step"]) == 3 * 9 for s in saved["optimizer"]["state"].values())
    assert {"python", "numpy", "torch", "shuffle"} <= saved["rng"].keys()


def test_random_states_survive_a_round_trip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    shuffle = torch.Generator().manual_seed(5)
    torch.rand(1), torch.rand(1, generator=shuffle)
    random.gauss(0, 1), np.random.randn()  # each leaves a cached second normal in its state
    save_checkpoint(tmp_path, {"rng": rng_state(shuffle)})

    def draw():
        return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
                torch.rand(3).tolist(), torch.randperm(10, generator=shuffle).tolist())

    first = draw()
    set_rng_state(load_checkpoint(tmp_path)["rng"], shuffle)
    assert draw() == first


def test_run_files_get_ordinary_permissions(reference):
    # tempfile.mkstemp creates 0600 files; a run directory is meant to be shared.
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "checkpoint.pt", "metrics.jsonl", "config.yaml"):
        mode = (reference[0].run_dir / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, f"{name}: {oct(mode)}"


# --------------------------------------------------------------------------- a failing write


class _HalfWriter:
    """A file whose write stores half the bytes, then fails as a full disk does."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.handle, name)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def inject(patch: pytest.MonkeyPatch, where: str, error=_disk_full) -> None:
    """Make atomic_write_bytes fail at ``where``: creating, writing, syncing or renaming."""
    if where == "mkstemp":
        patch.setattr(lenet.store.files.tempfile, "mkstemp", error)
    elif where == "write":
        real = os.fdopen
        patch.setattr(lenet.store.files.os, "fdopen", lambda fd, *a, **k: _HalfWriter(real(fd, *a, **k)))
    elif where == "fsync":
        patch.setattr(lenet.store.files.os, "fsync", error)
    else:
        patch.setattr(lenet.store.files.os, "replace", error)


WRITES = {
    "checkpoint.pt": lambda run: save_checkpoint(run, {"epoch": 99}),
    "metrics.jsonl": lambda run: write_metrics(run, [{"epoch": 99}]),
    "model.safetensors": lambda run: save_model(run / "model.safetensors", LeNet(build_config("d2l").model),
                                                build_config("d2l"), ("a",) * 10),
}


@pytest.mark.parametrize("where", ["mkstemp", "write", "fsync", "replace"])
@pytest.mark.parametrize("target", list(WRITES))
def test_a_failed_write_keeps_the_previous_file(finished_run, where, target):
    before = {name: (finished_run / name).read_bytes() for name in WRITES}
    with pytest.MonkeyPatch.context() as patch:
        inject(patch, where)
        with pytest.raises(RunError, match=rf"cannot write .*{re.escape(target)}: No space left on device; "
                                           "files saved before are intact"):
            WRITES[target](finished_run)
    assert {name: (finished_run / name).read_bytes() for name in WRITES} == before
    assert stray_temp_files(finished_run) == []
    assert load_checkpoint(finished_run)["epoch"] == 3
    assert [r["epoch"] for r in rows(finished_run)] == [1, 2, 3]
    load_model(finished_run)


def test_ctrl_c_during_a_write_keeps_the_previous_file(finished_run):
    before = (finished_run / "checkpoint.pt").read_bytes()

    def interrupt(*args):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        inject(patch, "fsync", interrupt)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(finished_run, {"epoch": 99})
    assert (finished_run / "checkpoint.pt").read_bytes() == before
    assert stray_temp_files(finished_run) == []


# --------------------------------------------------------------------------- Ctrl-C, in process


class _CtrlCAt:
    """Stands in for the progress bar and presses Ctrl-C (a real SIGINT) ``times`` times
    once epoch ``epoch`` has done ``step`` steps; step 0 is before its first step, the
    moment a Ctrl-C during the previous epoch's evaluation or checkpoint lands."""

    def __init__(self, epoch: int, step: int, times: int = 1):
        self.epoch, self.step, self.times = epoch, step, times
        self.fired = False

    def __call__(self, epoch, epochs, total, done=0):
        self.current, self.n = epoch, done
        self._maybe_press()  # step 0: the bar of the epoch is made before its first step
        return self

    def update(self, n):
        self.n += n
        self._maybe_press()

    def _maybe_press(self):
        if not self.fired and self.current == self.epoch and self.n == self.step:
            self.fired = True
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)

    def close(self):
        pass


@pytest.mark.parametrize("step", [0, 4, 9], ids=["before-first-step", "mid-epoch", "after-last-step"])
def test_ctrl_c_saves_the_epoch_in_progress_and_resume_is_bitwise_exact(
        data_dir, reference, tmp_path, monkeypatch, capsys, step):
    monkeypatch.setattr(lenet.training.progress.Progress, "bar", _CtrlCAt(epoch=2, step=step))
    with pytest.raises(Interrupted, match=rf"epoch 2, step {step}; checkpoint saved\. "
                                          rf"Continue with: lenet train --resume {tmp_path}/part"):
        train(run_config(data_dir, tmp_path, "part"), out=tmp_path)
    assert "finishing this step and saving a checkpoint" in capsys.readouterr().err
    run = tmp_path / "part"
    status = json.loads((run / "status.json").read_text())
    assert status == {"status": "interrupted", "epoch": 2, "step": step}
    assert load_checkpoint(run)["step"] == step and [r["epoch"] for r in rows(run)] == [1]
    resume(run)
    assert_resumed_exactly(run, reference[0].run_dir)


def test_ctrl_c_twice_stops_at_once_and_the_last_epoch_checkpoint_resumes_exactly(
        data_dir, reference, tmp_path, capsys):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lenet.training.progress.Progress, "bar", _CtrlCAt(epoch=2, step=4, times=2))
        code = main(["train", "--preset", "keras-v2-scaled", "--data-dir", str(data_dir), "--out", str(tmp_path),
                     "--name", "part", "--epochs", "3", "--device", "cpu", "--set", "train.progress=never"])
    err = capsys.readouterr().err
    run = tmp_path / "part"
    assert code == 130 and "Traceback" not in err
    assert f"stopped at once by a second Ctrl-C; the checkpoint of the last finished epoch is intact. " \
           f"Continue with: lenet train --resume {run}" in err
    assert load_checkpoint(run)["epoch"] == 1 and stray_temp_files(run) == []
    assert main(["train", "--resume", str(run)]) == 0
    assert_resumed_exactly(run, reference[0].run_dir)


# --------------------------------------------------------------------------- kill and Ctrl-C, real processes


SUB_EPOCHS, SUB_STEPS = 4, 90  # 720 train examples / batch 8


def start_lenet(args: list[str], cwd: Path, log: str) -> tuple[subprocess.Popen, Path]:
    """`lenet ARGS` in a fresh interpreter, stdout/stderr to files under ``cwd``."""
    env = {**os.environ, "LENET_NO_DOWNLOAD": "1", "XDG_CACHE_HOME": str(cwd / "cache"),
           "OMP_NUM_THREADS": "1",  # as _one_thread above: every run of a comparison alike
           "PYTHONUNBUFFERED": "1"}
    err = cwd / f"{log}.stderr"
    with open(cwd / f"{log}.stdout", "wb") as out_file, open(err, "wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "lenet.cli", *args],
                                cwd=cwd, env=env, stdout=out_file, stderr=err_file)
    return proc, err


def train_args(data_dir: Path, out: Path, name: str) -> list[str]:
    return ["train", "--preset", "keras-v2-scaled", "--data-dir", str(data_dir), "--out", str(out), "--name", name,
            "--epochs", str(SUB_EPOCHS), "--batch-size", "8", "--device", "cpu",
            "--set", "train.progress=always"]  # the bar on stderr is how the test sees the steps


def finish(proc: subprocess.Popen, err: Path, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"lenet did not finish in {timeout} s; stderr:\n{err.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Never leave a training process behind a failed test."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait_inside_epoch(proc: subprocess.Popen, err: Path, epoch: int, timeout: float = 120) -> None:
    """Until the progress bar on stderr shows at least one finished step of ``epoch``."""
    bar = re.compile(rf"epoch {epoch}/{SUB_EPOCHS}:[^\r\n]*?([1-9]\d*)/{SUB_STEPS} ".encode())
    deadline = time.monotonic() + timeout
    while not bar.search(err.read_bytes()):
        if proc.poll() is not None:
            pytest.fail(f"lenet exited ({proc.returncode}) before epoch {epoch}:\n{err.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"epoch {epoch} did not start within {timeout} s")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def sub_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sub-data")
    write_tiny_dataset(root / "fashion-mnist", n_train=800, n_test=100)
    return root


@pytest.fixture(scope="module")
def uninterrupted(sub_data, tmp_path_factory) -> Path:
    """The 4-epoch reference, trained in this process (a subprocess would add seconds of imports)."""
    home = tmp_path_factory.mktemp("uninterrupted")
    assert main(train_args(sub_data, home, "reference")) == 0
    return home / "reference"


@pytest.mark.slow  # real processes, killed and resumed: about 6 s
def test_sigint_then_sigkill_then_resume_is_bitwise_the_uninterrupted_run(sub_data, uninterrupted, tmp_path):
    run = tmp_path / "twin"
    # 1. Ctrl-C (SIGINT) inside epoch 2: exit 130, the step saved, how to go on printed.
    proc, err = start_lenet(train_args(sub_data, tmp_path, "twin"), tmp_path, "first")
    try:
        wait_inside_epoch(proc, err, 2)
        proc.send_signal(signal.SIGINT)
        code = finish(proc, err)
    finally:
        stop(proc)
    stderr = err.read_text()
    assert code == 130, stderr[-2000:]
    assert f"Continue with: lenet train --resume {run}" in stderr and "Traceback" not in stderr, stderr[-2000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["epoch"] == 2, status
    assert 0 < status["step"] < SUB_STEPS, f"the signal should land inside epoch 2: {status}"
    saved = load_checkpoint(run)
    assert (saved["epoch"], saved["step"], len(saved["metrics"])) == (1, status["step"], 1)

    # 2. Resume mid-epoch, then SIGKILL inside epoch 3: no handler runs, nothing is saved
    # but what epoch 2 had already checkpointed.
    proc, err = start_lenet(["train", "--resume", str(run)], tmp_path, "second")
    try:
        wait_inside_epoch(proc, err, 3)
        proc.send_signal(signal.SIGKILL)
        code = finish(proc, err)
    finally:
        stop(proc)
    assert code == -signal.SIGKILL, err.read_text()[-2000:]
    saved = load_checkpoint(run)
    assert (saved["epoch"], saved["step"], [r["epoch"] for r in rows(run)]) == (2, 0, [1, 2])

    # 3. Resume at the epoch boundary and finish (in this process, to save the imports):
    # the very run that was never stopped.
    assert main(["train", "--resume", str(run)]) == 0
    assert_resumed_exactly(run, uninterrupted)
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    log = (run / "train.log").read_text()
    assert f"resuming {run} at epoch 2, step {status['step'] + 1}" in log and f"resuming {run} at epoch 3" in log


@pytest.mark.slow  # real processes, one killed: about 4 s
def test_a_run_in_training_is_locked_and_a_sigkill_leaves_no_stale_lock(sub_data, uninterrupted, tmp_path, capsys):
    run = tmp_path / "twin"
    proc, err = start_lenet(train_args(sub_data, tmp_path, "twin"), tmp_path, "first")
    try:
        wait_inside_epoch(proc, err, 2)
        checkpoint = (run / "checkpoint.pt").read_bytes()
        # While it trains, neither a resume nor an --exist-ok restart may write that run.
        resumed = main(["train", "--resume", str(run)])
        restarted = main([*train_args(sub_data, tmp_path, "twin"), "--exist-ok"])
        wait_inside_epoch(proc, err, 2)  # still alive and training
        assert (run / "checkpoint.pt").read_bytes() == checkpoint
        proc.send_signal(signal.SIGKILL)
        assert finish(proc, err) == -signal.SIGKILL
    finally:
        stop(proc)
    stderr = capsys.readouterr().err
    assert (resumed, restarted) == (1, 1), stderr
    busy = f"{run} is being trained by another lenet process (pid {proc.pid} on "
    assert stderr.count(busy) == 2 and f"continue with `lenet train --resume {run}`" in stderr, stderr
    assert "Traceback" not in stderr
    status = json.loads((run / "status.json").read_text())
    assert status == {"status": "running", "epoch": 2}, status  # killed outright: how far it got
    # The kernel dropped the killed process's lock: no stale lock file blocks the resume,
    # which ends as the run that was never stopped.
    assert main(["train", "--resume", str(run)]) == 0
    assert_resumed_exactly(run, uninterrupted)


def test_temporary_files_of_a_killed_write_are_removed_on_resume(finished_run, capsys):
    checkpoint = (finished_run / "checkpoint.pt").read_bytes()
    for name in (".checkpoint.pt.k1ll3d00.tmp", ".metrics.jsonl.x7y8z9ab.tmp"):
        (finished_run / name).write_bytes(b"the first half of a file")  # what a SIGKILL mid-write leaves
    assert main(["train", "--resume", str(finished_run)]) == 0
    assert stray_temp_files(finished_run) == []
    log = (finished_run / "train.log").read_text()
    assert ("removed 2 unfinished temporary file(s) that a killed process left: "
            ".checkpoint.pt.k1ll3d00.tmp, .metrics.jsonl.x7y8z9ab.tmp") in log
    assert (finished_run / "checkpoint.pt").read_bytes() == checkpoint


def test_a_folder_a_run_died_in_before_its_first_write_is_not_an_existing_run(data_dir, capsys):
    left = Path("runs/early")
    left.mkdir(parents=True)
    (left / ".lock").write_text("pid 1 on elsewhere\n")
    (left / ".config.yaml.a1b2c3d4.tmp").write_text("half")
    assert main(["train", "--preset", "d2l", "--data-dir", str(data_dir), "--name", "early", "--dry-run"]) == 0
    assert (left / "model.safetensors").is_file() and stray_temp_files(left) == []


# --------------------------------------------------------------------------- resume: the odd cases


def test_resuming_a_finished_run_has_nothing_to_do_and_changes_nothing(finished_run, capsys):
    files = ("metrics.jsonl", "metrics.csv", "checkpoint.pt")
    before = {name: (finished_run / name).read_bytes() for name in files}
    metadata = load_model(finished_run).meta
    reference = Path(shutil.copytree(finished_run, finished_run.parent / "before"))
    assert main(["train", "--resume", str(finished_run)]) == 0
    assert "nothing to do: the run had already finished" in capsys.readouterr().out
    assert {name: (finished_run / name).read_bytes() for name in files} == before
    # The model file is written again: same tensors, same metadata (safetensors may
    # order the metadata differently, so the bytes are not compared).
    assert_same_weights(finished_run, reference)
    assert load_model(finished_run).meta == metadata


@pytest.mark.parametrize("damage", ["no checkpoint", "no config", "not a run", "truncated checkpoint",
                                    "random bytes", "foreign checkpoint", "config edited"])
def test_resume_refuses_what_it_cannot_continue_with_a_clear_message(finished_run, capsys, damage):
    run = finished_run
    expected = {
        "no checkpoint": r"no checkpoint\.pt to resume from",
        "no config": r"no config\.yaml; is this a lenet run directory\?",
        "not a run": r"no config\.yaml; is this a lenet run directory\?",
        "truncated checkpoint": r"checkpoint\.pt: not a readable lenet checkpoint",
        "random bytes": r"checkpoint\.pt: not a readable lenet checkpoint",
        "foreign checkpoint": r"checkpoint\.pt does not fit",
        "config edited": r"checkpoint\.pt does not fit",
    }[damage]
    if damage == "no checkpoint":
        (run / "checkpoint.pt").unlink()
    elif damage == "no config":
        (run / "config.yaml").unlink()
    elif damage == "not a run":
        run = run.parent / "nowhere"
    elif damage == "truncated checkpoint":
        data = (run / "checkpoint.pt").read_bytes()
        (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    elif damage == "random bytes":
        (run / "checkpoint.pt").write_bytes(os.urandom(4096))
    elif damage == "foreign checkpoint":  # loads safely, but is not one of ours
        torch.save({"epoch": 1, "weights": torch.zeros(3)}, run / "checkpoint.pt")
    else:  # the architecture in config.yaml no longer matches the saved weights
        text = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(text.replace("- 6\n", "- 8\n", 1))
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert err.startswith("lenet train: error: ") and "Traceback" not in err


# --------------------------------------------------------------------------- hostile and foreign files


def test_a_checkpoint_that_would_run_code_is_refused_unexecuted(finished_run, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    torch.save({"epoch": 1, "model": Payload(marker)}, finished_run / "checkpoint.pt")
    assert main(["train", "--resume", str(finished_run)]) == 1
    err = capsys.readouterr().err
    assert "not a readable lenet checkpoint" in err and "it was not loaded" in err and "Traceback" not in err
    assert "weights_only` set to `False`" not in err  # torch's advice, wrong for a hostile file
    assert not marker.exists(), "load_checkpoint unpickled arbitrary code"
    (finished_run / "checkpoint.pt").write_bytes(pickle.dumps({"epoch": 1, "model": Payload(marker)}))
    with pytest.raises(RunError, match="not a readable lenet checkpoint"):
        load_checkpoint(finished_run)
    assert not marker.exists()
    # The payload is live: an unsafe load runs it. That is what weights_only=True prevents.
    torch.save({"model": Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.is_dir()
