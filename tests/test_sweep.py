"""Sweeps on tiny synthetic data: expansion, validation, resume, failures, statistics, --jobs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import run_locked_elsewhere
from lenet.experiments import sweep
from lenet.experiments.sweep import execute
from lenet.cli import main
from lenet.errors import ConfigError


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_spec(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def train_calls(monkeypatch):
    """Every run the sweep trains, as ("new", run name) or ("resume", dir name)."""
    calls = []
    real_train, real_resume = execute.train, execute.resume

    def counting_train(cfg, **kwargs):
        calls.append(("new", cfg.name))
        return real_train(cfg, **kwargs)

    def counting_resume(run_dir, **kwargs):
        calls.append(("resume", Path(run_dir).name))
        return real_resume(run_dir, **kwargs)

    monkeypatch.setattr(execute, "train", counting_train)
    monkeypatch.setattr(execute, "resume", counting_resume)
    return calls


# --------------------------------------------------------------------------- planning


def test_a_run_directory_from_another_config_is_refused_but_not_for_how_it_computed(tmp_path):
    """check_same_config: a different lr is another run; a different evaluation batch or
    micro-batch (how it computed, e.g. a run made before their defaults changed) is not."""
    from lenet.errors import RunError
    from lenet.store.runs import save_config

    spec = sweep.parse_spec({"name": "same", "base": "d2l", "seeds": 1, "include_base": False,
                             "variants": [{"name": "v", "set": {"optim.lr": 0.5}}]})
    planned = sweep.plan_sweep(spec, tmp_path).runs()[0]
    planned.run_dir.mkdir(parents=True)
    execute.check_same_config(planned)  # nothing there yet
    older = planned.config.model_copy(update={"train": planned.config.train.model_copy(
        update={"eval_batch_size": 2048, "micro_batch": 0, "fused_layers": False, "progress": "never"})}, deep=True)
    save_config(planned.run_dir, older)
    execute.check_same_config(planned)
    other = planned.config.model_copy(update={"optim": planned.config.optim.model_copy(update={"lr": 0.9})},
                                      deep=True)
    save_config(planned.run_dir, other)
    with pytest.raises(RunError, match="optim.lr: 0.9 there, 0.5 now"):
        execute.check_same_config(planned)


def test_grid_is_the_cartesian_product_with_readable_names():
    spec = sweep.parse_spec({"name": "g", "base": "d2l", "seeds": 2, "common": {"train": {"epochs": 3}},
                             "grid": {"model.pool": ["avg", "max"], "optim.lr": [0.1, 0.9, 2.0]}})
    plan = sweep.plan_sweep(spec, "out", overrides=["optim.momentum=0.5"])
    names = [v.name for v in plan.variants]
    assert names == ["pool=avg,lr=0.1", "pool=avg,lr=0.9", "pool=avg,lr=2.0",
                     "pool=max,lr=0.1", "pool=max,lr=0.9", "pool=max,lr=2.0"]
    # d2l is avg-pool at lr 0.9: that grid point is the baseline, no extra "base" run
    assert plan.baseline == "pool=avg,lr=0.9"
    by_name = {v.name: v for v in plan.variants}
    assert by_name["pool=max,lr=2.0"].config.model.pool == "max"
    assert by_name["pool=max,lr=2.0"].config.optim.lr == 2.0
    assert all(v.config.train.epochs == 3 and v.config.optim.momentum == 0.5 for v in plan.variants)
    runs = plan.runs()
    assert len(runs) == 12
    # seed-major: every variant's seed 0 before any seed 1
    assert [r.seed for r in runs] == [0] * 6 + [1] * 6
    assert runs[7].run_dir == Path("out/g/pool=avg,lr=0.9-s1") and runs[7].config.seed == 1
    assert runs[7].config.name == "pool=avg,lr=0.9-s1" and runs[7].config.out == "out/g"


def test_variants_list_explicit_seeds_and_an_added_base():
    spec = sweep.parse_spec({"name": "v", "base": {"preset": "d2l", "model": {"activation": "tanh"}},
                             "seeds": [7, 42], "common": {"train.epochs": 2},
                             "variants": [{"name": "wide", "set": {"model.conv_channels": [16, 32]}},
                                          {"name": "long", "set": {"train.epochs": 5}}]})
    # the command line's --set applies to all, but a variant's own field wins
    plan = sweep.plan_sweep(spec, "runs", overrides=["train.epochs=1"], seeds=None)
    assert [v.name for v in plan.variants] == ["base", "wide", "long"]
    assert plan.baseline == "base" and plan.seeds == [7, 42]
    wide, long_ = plan.variants[1], plan.variants[2]
    assert wide.config.model.activation == "tanh" and wide.config.model.conv_channels == [16, 32]
    assert wide.parameters > plan.variants[0].parameters and wide.mult_adds > plan.variants[0].mult_adds
    assert plan.variants[0].config.train.epochs == 1 and long_.config.train.epochs == 5
    assert sweep.format_changes(wide.changes) == "model.conv_channels=[16,32]"
    assert [r.run_dir.name for r in plan.runs()][:3] == ["base-s7", "wide-s7", "long-s7"]
    assert len(sweep.plan_sweep(spec, seeds=1).runs()) == 3  # --seeds overrides the spec


def test_the_exercises_spec_is_valid_and_covers_the_exercises():
    plan = sweep.plan_sweep(sweep.exercises_spec(), "runs")
    changed = {key for v in plan.variants for key in v.changes}
    for key in ("model.pool", "model.kernel_size", "model.conv_channels", "model.activation", "model.dense",
                "optim.lr", "model.init", "train.epochs", "data.dataset"):
        assert key in changed, key
    assert plan.baseline == "base" and plan.seeds == [0, 1, 2]
    assert any(len(v.config.model.conv_channels) == 3 for v in plan.variants)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"name": "x", "seed": 3, "grid": {"model.pool": ["max"]}}, "did you mean 'seeds'"),
        ({"name": "x", "grid": {"model.pool": []}}, "grid axis 'model.pool' is empty"),
        ({"name": "x", "grid": {"model.pol": ["max"]}}, "did you mean 'model.pool'"),
        ({"name": "x", "variants": [{"name": "neg", "set": {"optim.lr": -1}}]}, "variant 'neg'"),
        ({"name": "x", "variants": [{"name": "a", "sett": {}}]}, "did you mean 'variants.0.set'"),
        ({"name": "x"}, "give `grid:`"),
        ({"name": "x", "variants": [{"name": "a/b"}]}, "variants.0.name"),
        ({"name": "x", "variants": [{"name": "s", "set": {"seed": 3}}]}, "set by the sweep itself"),
    ],
)
def test_a_bad_spec_is_exit_2_naming_the_problem(capsys, tmp_path, spec, needle):
    path = write_spec(tmp_path / "bad.yaml", **spec)
    code, _, err = run(capsys, "sweep", path, "--dry-run")
    assert code == 2
    assert needle in err and "Traceback" not in err


def test_a_bad_value_names_the_variant_and_the_field():
    spec = sweep.parse_spec({"name": "x", "variants": [{"name": "ok", "set": {"optim.lr": 0.1}},
                                                       {"name": "big-kernel", "set": {"model.kernel_size": 31}}]})
    with pytest.raises(ConfigError, match=r"variant 'big-kernel'.*conv2 \(kernel 31"):
        sweep.plan_sweep(spec)


TEN = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@pytest.fixture
def no_expansion(monkeypatch):
    """Planning fails the test if it builds a grid's product."""
    def refuse(grid):
        raise AssertionError(f"the product of {len(grid)} axes was built")

    monkeypatch.setattr("lenet.experiments.sweep.plan.grid_variants", refuse)


def test_a_grid_over_the_limit_is_refused_by_counting_before_it_is_expanded(capsys, tmp_path, no_expansion):
    # 10^12 variants: expanding even the names would take the machine.
    grid = {f"optim.{key}": list(TEN) for key in ("lr", "momentum", "gamma", "warmup_fraction")}  # no YAML aliases
    grid.update({"model.dropout": TEN[:-1] + [0.0], "optim.ema": TEN[:-1] + [0.0]})
    grid.update({f"model.{k}": list(range(1, 11)) for k in ("pool_size", "pool_stride", "in_channels",
                                                            "input_size", "num_classes", "pool_padding")})
    path = write_spec(tmp_path / "huge.yaml", name="huge", seeds=3, grid=grid)
    code, out, err = run(capsys, "sweep", path, "--dry-run")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "10 x 10 x 10 x 10 x 10 x 10 x 10 x 10 x 10 x 10 x 10 x 10 = 1,000,000,000,000 variants" in err
    assert "up to 3,000,000,000,003 runs, over the limit of 10,000" in err and "--max-runs 3000000000003" in err


def test_max_runs_moves_the_limit_and_counts_seeds_and_the_base(capsys, tmp_path):
    path = write_spec(tmp_path / "s.yaml", name="small", seeds=2, variants=[
        {"name": "a", "set": {"optim.lr": 0.1}}, {"name": "b", "set": {"optim.lr": 0.2}}])
    code, _, err = run(capsys, "sweep", path, "--dry-run", "--max-runs", "5")
    assert code == 2 and "2 variants and the base, x 2 seed(s) = up to 6 runs, over the limit of 5" in err
    code, out, _ = run(capsys, "sweep", path, "--dry-run", "--max-runs", "6")
    assert code == 0 and "3 variants x 2 seeds = 6 runs" in out


@pytest.mark.parametrize("axis, needle", [
    ({"optim.lr2": [0.1, 0.2]}, "unknown key 'optim.lr2'; did you mean 'optim.lr'?"),
    ({"model.pool": ["avg", "max", "median"]}, "variant 'lr=0.1,momentum=0.1,pool=median'"),
])
def test_every_grid_field_and_value_is_checked_before_the_product(axis, needle, no_expansion):
    # Under a raised limit, 10^6 variants: the bad field or value is found without them.
    grid = {"optim.lr": TEN, "optim.momentum": TEN[:-1] + [0.0], **axis}
    spec = sweep.parse_spec({"name": "bad", "seeds": 1, "grid": grid})
    with pytest.raises(ConfigError) as info:
        sweep.plan_sweep(spec, max_runs=10**9)
    assert needle in str(info.value)


def test_axis_variants_hold_every_value_of_every_axis_and_are_grid_members():
    grid = {"optim.lr": [0.1, 0.2, 0.3], "model.pool": ["avg", "max"], "model.activation": ["relu", "tanh"]}
    members = sweep.plan.axis_variants(grid)
    product = {v.name: v.set for v in sweep.grid_variants(grid)}
    assert len(members) == 1 + 2 + 1 + 1 and all(product[v.name] == v.set for v in members)
    for key, values in grid.items():
        assert {v.set[key] for v in members} == set(values)


def test_dry_run_lists_runs_and_trains_nothing(capsys, tmp_path, train_calls):
    path = write_spec(tmp_path / "s.yaml", name="dry", grid={"model.activation": ["relu", "tanh"]})
    code, out, _ = run(capsys, "sweep", path, "--dry-run", "--seeds", "2")
    assert code == 0 and train_calls == []
    assert "3 variants x 2 seeds = 6 runs" in out and "activation=tanh-s1" in out and "base-s0" in out
    assert not Path("runs/dry").exists()


# --------------------------------------------------------------------------- running


def tiny_spec(tmp_path, data_dir, name="t", epochs=1, **extra):
    spec = {"name": name, "base": {"preset": "d2l", "train.batch_size": 64}, "seeds": 1,
            "common": {"train.epochs": epochs, "data.data_dir": str(data_dir), "device": "cpu"}, **extra}
    return write_spec(tmp_path / f"{name}.yaml", **spec)


@pytest.mark.slow
def test_an_interrupted_sweep_finishes_only_what_is_missing(capsys, tmp_path, tiny_data_dir, monkeypatch):
    path = tiny_spec(tmp_path, tiny_data_dir, epochs=2, grid={"model.pool": ["avg", "max"]})
    real_train, real_resume = execute.train, execute.resume

    def killed_after_first_epoch_of_max(cfg, **kwargs):
        if cfg.name == "pool=max-s0":
            def stop(row):
                raise KeyboardInterrupt  # as if the machine went down after epoch 1's checkpoint
            kwargs["on_epoch"] = stop
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(execute, "train", killed_after_first_epoch_of_max)
    code, out, _ = run(capsys, "sweep", path)
    assert code == 130
    assert "[1/2] pool=avg s0: test acc" in out
    avg_model = Path("runs/t/pool=avg-s0/model.safetensors").stat().st_mtime_ns

    calls = []
    monkeypatch.setattr(execute, "train", lambda c, **kw: calls.append(("new", c.name)) or real_train(c, **kw))
    monkeypatch.setattr(execute, "resume",
                        lambda d, **kw: calls.append(("resume", Path(d).name)) or real_resume(d, **kw))
    code, out, _ = run(capsys, "sweep", path)
    assert code == 0
    assert calls == [("resume", "pool=max-s0")]  # resumed, the finished run skipped
    assert "pool=avg s0: test acc" in out and "done before, skipped" in out and "resumed" in out
    assert Path("runs/t/pool=avg-s0/model.safetensors").stat().st_mtime_ns == avg_model
    rows = [json.loads(x) for x in Path("runs/t/pool=max-s0/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for name in ("summary.md", "summary.csv", "summary.json", "sweep.json", "accuracy_bars.png", "curves.png"):
        assert Path("runs/t", name).is_file(), name

    # a run deleted by hand is trained again, the rest skipped
    import shutil

    shutil.rmtree("runs/t/pool=avg-s0")
    calls.clear()
    assert run(capsys, "sweep", path)[0] == 0
    assert calls == [("new", "pool=avg-s0")]


def test_start_or_resume_does_what_the_run_directory_says(tmp_path, tiny_data_dir, train_calls):
    """The one start-or-resume a sweep's runs and a search's trials share (action_for,
    then start_or_resume): a checkpoint is continued, a finished run left alone, a failed
    run kept unless retried, and a retry starts from nothing."""
    from lenet.configuration.build import build_config
    from lenet.errors import Interrupted
    from lenet.store.recorder import FAILED, FINISHED, read_status
    from lenet.training.run import train

    cfg = build_config("d2l", overrides=[f"data.data_dir={tiny_data_dir}", "name=r", "train.epochs=3",
                                         "train.batch_size=64", "device=cpu"])
    run_dir = tmp_path / "r"
    assert execute.action_for(run_dir) == execute.START
    def ctrl_c_after_epoch_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # as Ctrl-C would: epoch 2's checkpoint stands

    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path, on_epoch=ctrl_c_after_epoch_2)
    assert execute.action_for(run_dir) == execute.RESUME
    execute.start_or_resume(cfg, run_dir, execute.action_for(run_dir))
    assert train_calls == [("resume", "r")] and read_status(run_dir)["status"] == FINISHED
    assert execute.action_for(run_dir) == execute.SKIP

    execute.record_failure(run_dir, "broken on purpose")
    assert read_status(run_dir)["status"] == FAILED
    assert execute.action_for(run_dir) == execute.KEEP_FAILED
    assert execute.action_for(run_dir, retry_failed=True) == execute.START
    (run_dir / "stale.txt").write_text("left by the failed attempt")
    execute.start_or_resume(cfg, run_dir, execute.START)
    assert train_calls[-1] == ("new", "r") and read_status(run_dir)["status"] == FINISHED
    assert not (run_dir / "stale.txt").exists()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(capsys, tmp_path, tiny_data_dir, train_calls):
    # SGD at lr 100 with ReLU blows the loss up within a few steps (see test_train).
    path = write_spec(tmp_path / "f.yaml", name="f", seeds=1,
                      base={"preset": "keras-v2-scaled", "model.dropout": 0, "optim.optimizer": "sgd"},
                      common={"train.epochs": 1, "data.data_dir": str(tiny_data_dir), "device": "cpu"},
                      variants=[{"name": "boom", "set": {"optim.lr": 100}}, {"name": "ok", "set": {"optim.lr": 0.05}}],
                      include_base=False)
    code, out, err = run(capsys, "sweep", path)
    assert code == 1  # every run was tried, and one failed
    assert "boom s0: FAILED: training diverged" in out and "[2/2] ok s0: test acc" in out
    assert "1 run(s) failed" in err
    rows = {r["variant"]: r for r in csv.DictReader(Path("runs/f/summary.csv").read_text().splitlines())}
    assert rows["boom"]["failed"] == "1" and rows["boom"]["n"] == "0" and "diverged" in rows["boom"]["failure_reason"]
    assert rows["ok"]["finished"] == "1" and float(rows["ok"]["test_accuracy_mean"]) > 0
    assert "0 finished, 1 failed (training diverged" in Path("runs/f/summary.md").read_text()
    assert "baseline variant: none (the base itself is not run)" in Path("runs/f/summary.md").read_text()
    status = json.loads(Path("runs/f/boom-s0/status.json").read_text())
    assert status["status"] == "diverged" and "lower learning rate" in status["reason"]

    train_calls.clear()
    code, out, _ = run(capsys, "sweep", path)  # a re-run keeps the failure, trains nothing
    assert code == 1 and train_calls == [] and "failed earlier: training diverged" in out
    code, out, _ = run(capsys, "sweep", path, "--retry-failed")
    assert code == 1 and train_calls == [("new", "boom-s0")]


def test_a_run_another_process_is_training_is_left_to_it_not_failed_or_cleared(
        capsys, tmp_path, tiny_data_dir, train_calls):
    path = tiny_spec(tmp_path, tiny_data_dir, name="b", grid={"model.pool": ["avg", "max"]})
    busy = Path("runs/b/pool=max-s0")
    busy.mkdir(parents=True)
    status = busy / "status.json"
    status.write_text('{"status": "running", "epoch": 1}')  # what the other process wrote first
    with run_locked_elsewhere(busy) as other:
        code, out, err = run(capsys, "sweep", path)
    assert code == 1  # not complete: the summary lacks that run
    assert "[1/2] pool=avg s0: test acc" in out
    assert "[2/2] pool=max s0: skipped: another lenet process is training it now" in out
    assert "1 finished, 0 failed, 1 being trained by another process" in out
    assert "1 run(s) are being trained by another lenet process" in err and "Traceback" not in err
    assert status.read_text() == '{"status": "running", "epoch": 1}'  # neither cleared nor marked failed
    assert other.returncode == -9  # it held the lock to the end (killed only on leaving the block)

    train_calls.clear()  # the other process is gone (its lock with it): the run is trained now
    code, out, _ = run(capsys, "sweep", path)
    assert code == 0 and train_calls == [("new", "pool=max-s0")]
    assert "[2/2] pool=max s0: test acc" in out


@pytest.mark.slow  # a pool of spawned worker processes: about 5 s
def test_jobs_2_gives_the_same_results_as_jobs_1(capsys, tmp_path, tiny_data_dir):
    grid = {"model.activation": ["sigmoid", "relu"]}
    for name, jobs in (("one", 1), ("two", 2)):
        path = tiny_spec(tmp_path, tiny_data_dir, name=name, grid=grid)
        assert run(capsys, "sweep", path, "--jobs", jobs, "--set", "optim.lr=0.3")[0] == 0
    for variant in ("activation=sigmoid-s0", "activation=relu-s0"):
        a = [json.loads(x) for x in Path(f"runs/one/{variant}/metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in Path(f"runs/two/{variant}/metrics.jsonl").read_text().splitlines()]
        assert [r["test_accuracy"] for r in a] == [r["test_accuracy"] for r in b]
        assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-5)


@pytest.mark.slow  # 16 runs; test_multi covers the grouped loop quickly
def test_same_shaped_runs_train_together_and_match_separate_runs(capsys, tmp_path, tiny_data_dir, train_calls):
    # Seeds and learning rates share every layer shape: one vmapped process trains them
    # (automatic on CUDA; forced here). A different activation is a group of its own.
    grid = {"optim.lr": [0.3, 0.5], "model.activation": ["sigmoid", "tanh"]}
    spec = tiny_spec(tmp_path, tiny_data_dir, name="tog", epochs=2, grid=grid, include_base=False, seeds=2)
    code, out, _ = run(capsys, "sweep", spec, "--together")
    assert code == 0
    assert out.count("training 4 runs together") == 2  # (2 lr x 2 seeds) per activation
    assert train_calls == []  # nothing went through the one-run path
    status = json.loads(Path("runs/tog/lr=0.5,activation=tanh-s1/status.json").read_text())
    assert status["status"] == "finished" and status["trained_with"] == 4

    spec = tiny_spec(tmp_path, tiny_data_dir, name="sep", epochs=2, grid=grid, include_base=False, seeds=2)
    assert run(capsys, "sweep", spec, "--separately")[0] == 0
    assert len(train_calls) == 8
    for variant in ("lr=0.3,activation=sigmoid-s0", "lr=0.5,activation=tanh-s1"):
        a = [json.loads(x) for x in Path(f"runs/tog/{variant}/metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in Path(f"runs/sep/{variant}/metrics.jsonl").read_text().splitlines()]
        # smooth activations and avg-pool: no ties, so only rounding separates them
        assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-4)
        assert [r["test_accuracy"] for r in a] == pytest.approx([r["test_accuracy"] for r in b], abs=0.011)


# --------------------------------------------------------------------------- statistics


def fake_run(run_dir: Path, accuracies: list[float], val: list[float] | None = None, status: str = "finished",
             seconds: float = 2.0) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "train_accuracy": a, "test_accuracy": a,
             "val_accuracy": None if val is None else val[i], "epoch_seconds": seconds}
            for i, a in enumerate(accuracies)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reason = {"reason": "training diverged: the loss became NaN at step 3"} if status == "diverged" else {}
    (run_dir / "status.json").write_text(json.dumps({"status": status, **reason}))


def fake_sweep(root: Path) -> Path:
    spec = sweep.parse_spec({"name": "stats", "seeds": 3, "variants": [
        {"name": "a", "set": {"model.pool": "max"}}, {"name": "b", "set": {"optim.lr": 0.1}}]})
    plan = sweep.plan_sweep(spec, root)
    sweep.write_plan(plan)
    d = plan.sweep_dir
    for seed, final in enumerate([0.80, 0.82, 0.84]):
        fake_run(d / f"base-s{seed}", [0.5, final], seconds=3.0)
    # variant a: best epoch by validation accuracy (2, 3, 3 -> mean 2.67 -> 3), not by test
    fake_run(d / "a-s0", [0.7, 0.9, 0.8], val=[0.6, 0.9, 0.7])
    fake_run(d / "a-s1", [0.7, 0.8, 0.9], val=[0.6, 0.7, 0.9])
    fake_run(d / "a-s2", [0.9, 0.8, 0.7], val=[0.5, 0.7, 0.8])
    fake_run(d / "b-s0", [0.6], seconds=5.0)
    fake_run(d / "b-s1", [0.1, float("nan")], status="diverged")
    return d  # b-s2 never ran: pending


def test_summary_statistics_from_known_numbers(tmp_path):
    sweep_dir = fake_sweep(tmp_path)
    summaries = {s.name: s for s in sweep.write_summary(sweep_dir)}
    base, a, b = summaries["base"], summaries["a"], summaries["b"]
    assert base.mean == pytest.approx(0.82) and base.std == pytest.approx(0.02) and base.n == 3
    assert base.best_epoch == 2 and base.mean_seconds == pytest.approx(6.0)
    assert a.mean == pytest.approx(0.8) and a.std == pytest.approx(0.1) and a.best_epoch == 3
    assert b.n == 1 and math.isnan(b.std) and len(b.failed) == 1 and b.pending == 1
    assert b.status.startswith("1 finished, 1 failed (training diverged") and b.status.endswith("1 pending")

    md = (sweep_dir / "summary.md").read_text()
    assert "| base | (the base) | 61,706 | 416,520 | 0.8200 ± 0.0200 | 3 | 2 | 6.0 | 3 finished |" in md
    assert "| b | optim.lr=0.1 |" in md and "| 0.6000 | 1 |" in md
    rows = {r["variant"]: r for r in csv.DictReader(Path(sweep_dir / "summary.csv").read_text().splitlines())}
    assert float(rows["a"]["test_accuracy_std"]) == pytest.approx(0.1)
    assert rows["b"]["test_accuracy_std"] == "" and rows["b"]["pending"] == "1"
    assert (sweep_dir / "accuracy_bars.png").stat().st_size > 5000 and (sweep_dir / "curves.png").is_file()


def test_a_run_whose_dataset_is_missing_fails_alone_and_the_sweep_goes_on(capsys, tmp_path, tiny_data_dir):
    import shutil

    shutil.rmtree(tiny_data_dir / "mnist")  # this machine has no MNIST (Debian ships only Fashion-MNIST)
    path = tiny_spec(tmp_path, tiny_data_dir, name="m", include_base=False,
                     variants=[{"name": "mnist", "set": {"data.dataset": "mnist"}}, {"name": "fashion", "set": {}}])
    code, out, _ = run(capsys, "sweep", path, "--dry-run")
    assert code == 0 and "warning: dataset 'mnist' is not on this machine" in out and "lenet download mnist" in out
    code, out, err = run(capsys, "sweep", path)
    assert code == 1 and "1 run(s) failed" in err and "Traceback" not in err
    assert "[1/2] mnist s0: FAILED: dataset 'mnist' not found" in out
    assert "[2/2] fashion s0: test acc" in out  # trained after the failure, not stopped by it
    status = json.loads(Path("runs/m/mnist-s0/status.json").read_text())
    assert status["status"] == "failed" and "lenet download mnist" in status["reason"]
    rows = {r["variant"]: r for r in csv.DictReader(Path("runs/m/summary.csv").read_text().splitlines())}
    assert rows["mnist"]["failed"] == "1" and rows["fashion"]["finished"] == "1"
