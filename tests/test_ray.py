"""lenet on a real local Ray (no mocks): sweeps as Ray tasks, a worker killed mid-run,
a driver killed and resumed, and a Tune search with ASHA. One Ray instance (2 CPUs,
token authentication on) serves the whole module; the tests that need a driver of
their own start `lenet` as a subprocess connected to it. tests/test_ray_cluster.py
covers two nodes, storage and tokens."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import write_tiny_dataset
from lenet.cli import main

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install -e '.[ray]' (scripts/test.sh installs it)")

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.slow]  # one worker runs them all, against one Ray; ~2.5 min


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray with 2 CPUs, as `lenet sweep --backend ray` would start; token
    authentication on, with a token of the test's own (nothing written to ~/.ray)."""
    with pytest.MonkeyPatch.context() as patch:
        # RAY_AUTH_MODE unset: Ray turns token authentication on for a new local cluster
        # itself (and sets it for this process and the drivers the tests start).
        patch.delenv("RAY_AUTH_MODE", raising=False)
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
        # Ray lowers its workers' priority (nice 15); the other test worker would starve them.
        patch.setenv("RAY_worker_niceness", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        # One GPU as a Ray resource (no CUDA behind it): enough to show runs sharing it.
        # address="local": a fresh Ray even where /tmp/ray/ray_current_cluster names another.
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def write_spec(path: Path, data_dir: Path, **spec) -> Path:
    spec.setdefault("common", {})
    spec["common"] = {"data.data_dir": str(data_dir), "train.batch_size": 64, **spec["common"]}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def lenet_subprocess(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lenet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, start_new_session=True)


def wait_for(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- sweeps


def test_a_sweep_on_ray_killed_and_resumed_equals_the_local_sweep(local_ray, tiny_data_dir, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny_data_dir, name="pools", seeds=2,
                      common={"train.epochs": 3}, grid={"model.pool": ["avg", "max"]})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    out = tmp_path / "ray"
    # The driver is killed once a run has finished; its tasks die with it.
    driver = lenet_subprocess("sweep", str(spec), "--out", str(out), "--backend", "ray", "--address", local_ray)
    sweep_dir = out / "pools"
    wait_for(lambda: any(json.loads(p.read_text()).get("status") == "finished"
                         for p in sweep_dir.glob("*/status.json")), 120, "a finished run")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate()
    finished_before = {p.parent.name for p in sweep_dir.glob("*/status.json")
                       if json.loads(p.read_text()).get("status") == "finished"}
    assert 0 < len(finished_before) < 4
    assert main(["sweep", str(spec), "--out", str(out), "--backend", "ray", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "on a local Ray: 1 node(s), 2 CPU(s)" in printed
    assert printed.count("(done before, skipped)") == len(finished_before)
    for run in ("pool=avg-s0", "pool=max-s0", "pool=avg-s1", "pool=max-s1"):
        local, remote = metrics(tmp_path / "local" / "pools" / run), metrics(sweep_dir / run)
        assert [r["epoch"] for r in remote] == [1, 2, 3]
        assert [r["test_accuracy"] for r in remote] == [r["test_accuracy"] for r in local]
        assert [r["train_loss"] for r in remote] == pytest.approx([r["train_loss"] for r in local], rel=1e-6)
    assert (sweep_dir / "summary.md").is_file() and main(["report", str(sweep_dir)]) == 0


def test_resume_without_a_sweep_to_resume_is_refused(tiny_data_dir, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny_data_dir, name="none", seeds=1, variants=[{"name": "a"}])
    assert main(["sweep", str(spec), "--backend", "ray", "--resume"]) == 2
    assert "there is no sweep to resume" in capsys.readouterr().err


def test_a_worker_killed_mid_run_is_retried_from_its_checkpoint(local_ray, tmp_path, capsys):
    from lenet.experiments.sweep import run_on_ray
    from lenet.experiments.sweep import load_spec, plan_sweep

    data = tmp_path / "bigger"
    write_tiny_dataset(data / "fashion-mnist", n_train=6000)  # epochs long enough to aim a kill at
    spec = write_spec(tmp_path / "spec.yaml", data, name="kill", seeds=1, include_base=False,
                      common={"train.epochs": 6}, variants=[{"name": "relu", "set": {"model.activation": "relu"}}])
    plan = plan_sweep(load_spec(spec), tmp_path / "runs")
    lines: list[str] = []
    outcomes: list = []
    sweep = threading.Thread(target=lambda: outcomes.extend(run_on_ray(plan, log=lines.append)))
    sweep.start()
    run_dir = plan.runs()[0].run_dir
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(metrics(run_dir)) >= 2, 120, "two epochs")
    pid = int((run_dir / ".lock").read_text().split()[1])  # "pid N on host, since ..."
    os.kill(pid, signal.SIGKILL)
    sweep.join(180)
    assert not sweep.is_alive()
    assert any("its worker process died; retry 1 of 3 from its last checkpoint" in line for line in lines), lines
    assert outcomes[0].status == "finished"
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2, 3, 4, 5, 6]  # each epoch once
    assert "resuming" in (run_dir / "train.log").read_text()
    # The same run on this machine, never interrupted: the same numbers (CPU resume is exact).
    from lenet.training.run import train

    alone = train(plan.runs()[0].config.model_copy(update={"name": "alone"}), out=tmp_path / "alone")
    assert [r["test_accuracy"] for r in metrics(run_dir)] == [r["test_accuracy"] for r in alone.history]


def test_a_cluster_without_room_for_a_run_is_refused_before_anything_starts(local_ray, tiny_data_dir, tmp_path,
                                                                            capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny_data_dir, name="big", seeds=1, variants=[{"name": "a"}])
    assert main(["sweep", str(spec), "--backend", "ray", "--gpus-per-run", "2"]) == 2
    assert "--gpus-per-run 2 but no node has more than 1" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--backend", "ray", "--cpus-per-run", "4"]) == 2
    assert "no node has more than 2 CPU(s)" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "big").exists()


def test_runs_asking_for_a_quarter_of_a_gpu_share_one(local_ray, tiny_data_dir, tmp_path, capsys):
    # The local Ray has one GPU as a resource; on this CPU-only torch the runs train on
    # the CPU, but Ray gives each of them a share of GPU 0, as it would on a GPU machine.
    spec = write_spec(tmp_path / "spec.yaml", tiny_data_dir, name="share", seeds=2,
                      common={"train.epochs": 1}, grid={"model.pool": ["avg", "max"]})
    assert main(["sweep", str(spec), "--backend", "ray", "--gpus-per-run", "0.25", "--cpus-per-run", "0.5",
                 "--separately"]) == 0
    assert "each run asks for 0.5 CPU(s) and 0.25 GPU" in capsys.readouterr().out
    runs = sorted((tmp_path / "runs" / "share").glob("pool=*"))
    assert len(runs) == 4
    for run_dir in runs:
        assert json.loads((run_dir / "environment.json").read_text())["ray_gpu_ids"] == ["0"]


def test_a_bucket_url_is_refused_with_how_to_use_a_bucket(tiny_data_dir, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny_data_dir, name="s", seeds=1, variants=[{"name": "a"}])
    assert main(["sweep", str(spec), "--backend", "ray", "--out", "s3://bucket/runs"]) == 2
    err = capsys.readouterr().err
    assert "give a path, not a URI" in err and "mount it at the same path on every node" in err


# --------------------------------------------------------------------------- searches


def search_spec(tmp_path: Path, data_dir: Path, name: str = "lr", trials: int = 8) -> Path:
    return write_spec(tmp_path / f"{name}.yaml", data_dir, name=name, base="d2l", trials=trials,
                      algorithm="random", seed=3, asha={"grace_epochs": 1, "reduction_factor": 2},
                      common={"train.epochs": 4, "data.val_split": 0.2, "model.activation": "relu"},
                      search={"optim.lr": {"loguniform": [1.0e-4, 1.0]}, "model.pool": {"choice": ["avg", "max"]}})


def test_a_search_with_asha_stops_weak_trials_and_chooses_on_validation(local_ray, tiny_data_dir, tmp_path, capsys):
    spec = search_spec(tmp_path, tiny_data_dir)
    assert main(["search", str(spec)]) == 0
    printed = capsys.readouterr().out
    search_dir = tmp_path / "runs" / "lr"
    rows = (search_dir / "trials.csv").read_text().splitlines()[1:]
    statuses = [row.split(",")[-4] for row in rows]
    assert len(rows) == 8 and statuses.count("stopped early") >= 1 and statuses.count("finished") >= 1
    assert printed.count("stopped early after epoch") == statuses.count("stopped early")
    for trial in (search_dir / "trials").iterdir():  # the test set was never evaluated while choosing
        assert all(r["test_accuracy"] is None for r in metrics(trial))
    summary = json.loads((search_dir / "summary.json").read_text())
    best = next(t for t in summary["trials"] if t["name"] == summary["best"])
    finished = [t for t in summary["trials"] if t["status"] == "finished"]
    assert best["status"] == "finished" and best["metric"] == max(t["metric"] for t in finished)
    assert summary["test_accuracy"] is not None and "looked at once after choosing" in printed
    assert (search_dir / "search.png").is_file() and (search_dir / "best-config.yaml").is_file()
    assert main(["report", str(search_dir)]) == 0


def test_a_search_without_a_validation_split_is_refused(local_ray, tiny_data_dir, tmp_path, capsys):
    spec = search_spec(tmp_path, tiny_data_dir)
    assert main(["search", str(spec), "--set", "data.val_split=0"]) == 2
    assert "chooses on a validation split" in capsys.readouterr().err


@pytest.mark.parametrize("stop", ["SIGKILL", "ctrl-c"])
def test_a_search_whose_driver_dies_resumes_and_finishes_only_the_trials_left(local_ray, tiny_data_dir, tmp_path,
                                                                             capsys, stop):
    spec = search_spec(tmp_path, tiny_data_dir, name="again", trials=6)
    search_dir = tmp_path / "runs" / "again"
    driver = lenet_subprocess("search", str(spec), "--out", str(tmp_path / "runs"), "--address", local_ray,
                              "--no-asha")

    def finished() -> list[Path]:
        return [p.parent for p in search_dir.glob("trials/*/status.json")
                if json.loads(p.read_text()).get("status") == "finished"]

    wait_for(lambda: len(finished()) >= 2 and list((search_dir / "tune").glob("experiment_state-*.json")),
             120, "two finished trials and Tune's saved state")
    if stop == "SIGKILL":
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate()
    else:  # Tune stops gracefully, and the search ends as interrupted, not as done
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=120)
        assert driver.returncode == 130, err
        assert "search interrupted; run the same command with --resume" in err
        assert "Tuner.restore" not in err  # Tune's advice, for Python users, is not passed on
        assert not (search_dir / "summary.json").exists()
    done_before = {d.name: (d / "model.safetensors").stat().st_mtime_ns for d in finished()}
    assert main(["search", str(spec), "--resume", "--no-asha"]) == 0
    summary = json.loads((search_dir / "summary.json").read_text())
    assert len(summary["trials"]) == 6 and all(t["status"] == "finished" for t in summary["trials"])
    for name, mtime in done_before.items():  # finished before: not trained again
        assert (search_dir / "trials" / name / "model.safetensors").stat().st_mtime_ns == mtime
        assert (search_dir / "trials" / name / "train.log").read_text().count("run ") == 1
    assert main(["search", str(spec), "--no-asha"]) == 2  # without --resume: refused, nothing touched
    assert "already holds a search; add --resume" in capsys.readouterr().err


# --------------------------------------------------------------------------- without Ray


def test_without_ray_the_ray_commands_say_how_to_install_it(tiny_data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    spec = write_spec(tmp_path / "spec.yaml", tiny_data_dir, name="s", seeds=1, variants=[{"name": "a"}])
    assert main(["sweep", str(spec), "--backend", "ray"]) == 3
    assert "Ray is not installed" in capsys.readouterr().err
    assert main(["search", str(search_spec(tmp_path, tiny_data_dir))]) == 3
    assert "pip install -e '.[ray]'" in capsys.readouterr().err


def test_ray_options_belong_to_the_ray_backend(tiny_data_dir, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny_data_dir, name="s", seeds=1, variants=[{"name": "a"}])
    assert main(["sweep", str(spec), "--address", "10.0.0.1:6379"]) == 2
    assert "--address only apply with --backend ray" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--backend", "ray", "--jobs", "2"]) == 2
    assert "--jobs is for the local backend" in capsys.readouterr().err
