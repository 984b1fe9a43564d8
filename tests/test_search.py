"""Search specs and results without Ray: validation before anything starts, the choice
on the validation split, the test set looked at once, the best config as a file
`lenet train --config` takes. (tests/test_ray.py runs real searches on Ray.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lenet.experiments import search
from lenet.cli import main
from lenet.errors import ConfigError, Interrupted
from lenet.experiments.search.spec import STOPPED_BY_SEARCH, TrialConfigs, spec_to_dict
from lenet.training.run import train

SPACE = {"optim.lr": {"loguniform": [1.0e-3, 0.5]}, "model.pool": {"choice": ["avg", "max"]},
         "model.conv_channels": {"choice": [[6, 16], [8, 16]]}}


def spec(**changes):
    data = {"name": "s", "base": "d2l", "common": {"train.epochs": 2, "data.val_split": 0.2}, "search": SPACE,
            **changes}
    return search.parse_search_spec(data, "(test)")


@pytest.mark.parametrize("changes, needle", [
    ({"search": {}}, "`search:` is empty"),
    ({"search": {"optim.lr": {"gaussian": [0, 1]}}}, "give one of {choice: ...}"),
    ({"search": {"optim.lr": {"uniform": [0.5, 0.1]}}}, "needs low < high"),
    ({"search": {"optim.lr": {"loguniform": [0, 0.1]}}}, "loguniform needs low > 0"),
    ({"search": {"model.kernel_size": {"randint": [3, 5.5]}}}, "randint takes whole numbers"),
    ({"search": {"model.pool": {"choice": ["max", "max"]}}}, "the choices repeat"),
    ({"metric": "test_accuracy"}, "metric"),
    ({"trials": 0}, "trials"),
])
def test_a_bad_spec_is_refused_naming_the_field(changes, needle):
    with pytest.raises(ConfigError, match="search spec") as info:
        spec(**changes)
    assert needle in str(info.value)


def test_a_base_without_a_validation_split_is_refused():
    with pytest.raises(ConfigError, match="chooses on a validation split and this base has none"):
        TrialConfigs(spec(common={"train.epochs": 2}))


@pytest.mark.parametrize("space, needle", [
    ({"optim.lr": {"uniform": [-1.0, 0.5]}}, "optim.lr = -1.0"),  # the low end is not a valid lr
    ({"model.pool": {"choice": ["avg", "median"]}}, 'model.pool = "median"'),
    ({"model.dropuot": {"uniform": [0.0, 0.5]}}, "model.dropuot"),
])
def test_every_value_the_space_can_give_is_validated_before_the_search(space, needle):
    with pytest.raises(ConfigError) as info:
        TrialConfigs(spec(search=space))
    assert needle in str(info.value)


@pytest.mark.parametrize("key", ["seed", "name", "train.evaluate_test"])
def test_fields_the_search_owns_cannot_be_searched_or_set(key):
    with pytest.raises(ConfigError, match="set by the search itself"):
        TrialConfigs(spec(search={key: {"choice": [1, 2]}}))


def test_epochs_are_not_searched_under_asha():
    with pytest.raises(ConfigError, match="ASHA's budget"):
        TrialConfigs(spec(search={"train.epochs": {"choice": [2, 4]}}))
    TrialConfigs(spec(search={"train.epochs": {"choice": [2, 4]}}, asha=False))


def test_more_trials_than_the_limit_are_refused_before_anything_starts(capsys, tmp_path, monkeypatch):
    def no_ray():
        raise AssertionError("Ray was imported")

    monkeypatch.setattr("lenet.experiments.cluster.import_ray", no_ray)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec_to_dict(spec(trials=20_000))))
    assert main(["search", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "20,000 trials, over the limit of 10,000" in err and "--max-runs 20000" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()
    search.spec.check_trials(spec(trials=20_000), max_runs=20_000)  # the flag moves the limit


def test_max_runs_help_states_the_library_default(capsys):
    from lenet.experiments.sweep.plan import MAX_RUNS

    for command in ("sweep", "search"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"(default: {MAX_RUNS})" in " ".join(capsys.readouterr().out.split())


def test_trial_configs_never_evaluate_the_test_set_and_decode_choices():
    configs = TrialConfigs(spec())
    cfg = configs.build(configs.sampled({"optim.lr": 0.01, "model.pool": '"max"', "model.conv_channels": "[8, 16]"}))
    assert cfg.train.evaluate_test is False and cfg.optim.lr == 0.01 and cfg.model.pool == "max"
    assert list(cfg.model.conv_channels) == [8, 16] and cfg.data.val_split == 0.2


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400)])
def test_durations(text, seconds):
    assert search.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "5d"])
def test_a_bad_duration_is_refused(text):
    with pytest.raises(ConfigError, match="time-budget"):
        search.parse_duration(text)


def _fake_search(tmp_path: Path, tiny_data_dir: Path) -> tuple[Path, TrialConfigs]:
    """A search folder whose trials are real runs made without Ray: two that ran all
    their epochs and one that ASHA stopped early."""
    s = spec(common={"train.epochs": 3, "data.val_split": 0.2, "data.data_dir": str(tiny_data_dir),
                     "train.batch_size": 64, "model.activation": "relu"})
    search_dir = tmp_path / "runs" / "s"
    trials = search_dir / "trials"
    configs = TrialConfigs(s)
    (search_dir).mkdir(parents=True)
    (search_dir / "search.json").write_text(json.dumps({"spec": spec_to_dict(s), "overrides": []}))
    # Learning rates as a sampler gives them: more digits than anyone reads.
    for name, values, stop_at in (("trial-a", {"optim.lr": 0.31622776601683794, "model.pool": "max"}, None),
                                  ("trial-b", {"optim.lr": 0.0016051911333587634, "model.pool": "avg"}, None),
                                  ("trial-c", {"optim.lr": 0.1, "model.pool": "avg"}, 1)):
        cfg = configs.build(values, name=name, out=str(trials))

        def stop(row, n=stop_at):  # as search.run.trial does when Tune stops it
            if n and row["epoch"] >= n:
                raise Interrupted(f"{STOPPED_BY_SEARCH} after epoch {n}")

        if stop_at:
            with pytest.raises(Interrupted):
                train(cfg, out=trials, on_epoch=stop)
        else:
            train(cfg, out=trials)
    return search_dir, configs


def test_results_choose_on_validation_among_complete_trials_and_look_at_test_once(
        tiny_data_dir, tmp_path, monkeypatch):
    search_dir, _ = _fake_search(tmp_path, tiny_data_dir)
    for run_dir in (search_dir / "trials").iterdir():  # the search never computed a test metric
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert all(r["test_accuracy"] is None and r["val_accuracy"] is not None for r in rows)
    looked = []
    real_evaluate = __import__("lenet.use.evaluation", fromlist=["evaluate"]).evaluate

    def counting_evaluate(target, **kwargs):
        looked.append(Path(target).name)
        return real_evaluate(target, **kwargs)

    monkeypatch.setattr("lenet.use.evaluation.evaluate", counting_evaluate)
    result = search.collect(search_dir, log=lambda _: None)
    by_name = {t.name: t for t in result.trials}
    assert by_name["trial-c"].status == "stopped early" and by_name["trial-c"].epochs == 1
    complete = [t for t in result.trials if t.status == "finished"]
    assert result.best is not None and result.best.name == max(complete, key=lambda t: t.metric).name
    assert looked == [result.best.name] and result.test_accuracy is not None
    search.collect(search_dir, log=lambda _: None)  # again: the test set is not looked at twice
    assert looked == [result.best.name]

    summary = json.loads((search_dir / "summary.json").read_text())
    assert summary["best"] == result.best.name and summary["test_accuracy"] == result.test_accuracy
    csv_rows = (search_dir / "trials.csv").read_text().splitlines()
    assert csv_rows[0].startswith("trial,optim.lr,model.pool,model.conv_channels,epochs,status,val_accuracy")
    assert len(csv_rows) == 4 and (search_dir / "search.png").stat().st_size > 10_000
    assert "test set was not evaluated during the search" in (search_dir / "summary.md").read_text()


def test_the_best_config_file_trains_the_chosen_trial_with_lenet_train(tiny_data_dir, tmp_path, capsys):
    search_dir, _ = _fake_search(tmp_path, tiny_data_dir)
    result = search.collect(search_dir, log=lambda _: None)
    assert main(["train", "--config", str(search_dir / "best-config.yaml"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    chosen = yaml.safe_load((search_dir / "trials" / result.best.name / "config.yaml").read_text())
    for section in ("model", "optim", "data"):
        assert printed[section] == chosen[section]
    assert printed["train"]["evaluate_test"] is True  # a normal run again
    assert main(["train", "--config", str(search_dir / "best-config.yaml"), "--name", "again",
                 "--out", str(tmp_path / "again")]) == 0


def test_report_of_a_search_shows_the_choice_and_every_trial(tiny_data_dir, tmp_path, capsys):
    search_dir, _ = _fake_search(tmp_path, tiny_data_dir)
    search.collect(search_dir, log=lambda _: None)
    assert main(["report", str(search_dir)]) == 0
    page = (search_dir / "report.html").read_text()
    assert "Search s" in page and "trial-a" in page and "trial-c" in page and "data:image/png;base64," in page
    assert "stopped early" in page and "evaluated once, for the chosen config" in page


def test_report_of_a_search_shows_the_plot_then_the_choice_as_rounded_changes_and_folds_the_config(
        tiny_data_dir, tmp_path):
    search_dir, configs = _fake_search(tmp_path, tiny_data_dir)
    result = search.collect(search_dir, log=lambda _: None)
    assert main(["report", str(search_dir)]) == 0
    page = (search_dir / "report.html").read_text()
    folded = page.index("<details><summary>The chosen config in full (best-config.yaml)</summary>")
    assert page.index('alt="search plot"') < page.index("<h2>Chosen</h2>") < page.index("<h2>Trials</h2>") < folded
    lr = result.best.values["optim.lr"]
    assert f"<td>optim.lr</td><td>{configs.base.optim.lr:.4g}</td><td>{lr:.4g}</td>" in page
    assert repr(lr) not in page[:folded] and f"lr: {lr!r}" in page[folded:]  # the file keeps every digit
    changes = json.loads((search_dir / "summary.json").read_text())["best_changes"]
    assert [c["field"] for c in changes] == list(SPACE)  # nothing but the searched fields differs here
    assert changes[0] == {"field": "optim.lr", "base": configs.base.optim.lr, "chosen": lr, "searched": True}


@pytest.mark.parametrize("value, text", [(0.0016051911333587634, "0.001605"), (0.31622776601683794, "0.3162"),
                                         ([0.123456, 2], "[0.1235, 2]"), (True, "true"), (None, "null"),
                                         ("max", "max"), (256, "256")])
def test_values_are_rounded_to_four_significant_digits_for_reading(value, text):
    from lenet.experiments.search.results import readable

    assert readable(value) == text
