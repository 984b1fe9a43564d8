"""The Python front door (lenet.api and `import lenet`): the same words as the CLI,
runs in memory that leave no trace, a dataset the caller built, and what a run offers."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import lenet
from conftest import make_images
from lenet.cli import main
from lenet.errors import ConfigError, UsageError


def tiny(data_dir, **options):
    return lenet.config("keras-v2-scaled", **{"epochs": 2, "data_dir": str(data_dir), "device": "cpu", **options})


def test_every_public_name_resolves_and_lenet_train_is_the_function():
    for name in lenet.__all__:
        assert getattr(lenet, name) is not None, name
    # Importing the training module must not shadow the function of the same idea.
    for package in ("lenet.training", "lenet.configuration", "lenet.use"):
        importlib.import_module(package)
    assert callable(lenet.train) and lenet.train.__module__.startswith("lenet.training")
    assert callable(lenet.config) and callable(lenet.evaluate) and callable(lenet.summary)


def test_import_lenet_does_not_import_torch():
    code = "import sys, lenet; print('torch' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_config_takes_the_cli_flag_names_and_validates_as_the_cli_does(tmp_path):
    cfg = lenet.config("keras-v2", epochs=3, dataset="mnist", batch_size=32, amp=True, set={"model.pool": "avg"})
    assert (cfg.train.epochs, cfg.data.dataset, cfg.train.batch_size, cfg.speed.amp) == (3, "mnist", 32, True)
    assert cfg.model.pool == "avg" and cfg.model.activation == "relu"  # set= changes one field of the preset
    assert lenet.config().preset == "d2l"
    # The same resolved config as `lenet train ... --print-config`.
    assert main(["train", "--preset", "keras-v2", "--epochs", "3", "--dataset", "mnist", "--batch-size", "32",
                 "--amp", "--set", "model.pool=avg", "--print-config"]) == 0
    with pytest.raises(ConfigError, match="unknown option 'epoch'; did you mean 'epochs'"):
        lenet.config("d2l", epoch=3)
    with pytest.raises(ConfigError, match="optim.lr = -1.0"):
        lenet.config("d2l", lr=-1.0)
    with pytest.raises(ConfigError, match="unknown key 'model.pol'; did you mean 'model.pool'"):
        lenet.config("d2l", set={"model.pol": "max"})


def test_cli_print_config_equals_lenet_config(capsys):
    import yaml

    assert main(["train", "--preset", "keras-v1", "--lr", "0.01", "--set", "model.dense=[64]",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == lenet.config("keras-v1", lr=0.01, set={"model.dense": [64]}).to_dict()


def test_a_named_model_applies_however_the_config_is_built():
    assert lenet.RunConfig(model={"name": "lenet5-bn"}).model.batch_norm is True
    v2 = lenet.RunConfig(model={"name": "lenet5-v2"}).model
    assert (v2.activation, v2.pool, v2.dropout) == ("relu", "max", 0.5)
    assert lenet.ModelConfig(name="lenet5-v2", dropout=0.1).dropout == 0.1  # explicit fields win
    with pytest.raises(Exception, match="unknown model 'vgg'"):
        lenet.RunConfig(model={"name": "vgg"})


def test_training_in_memory_writes_nothing_prints_nothing_and_returns_the_run(tiny_data_dir, capsys, monkeypatch,
                                                                             tmp_path_factory):
    # The user cache (a CPU's bf16 calibration) lives outside the working folder, as ~/.cache does.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
    before = sorted(Path(".").rglob("*"))
    run = lenet.train(tiny(tiny_data_dir, epochs=1))
    assert sorted(Path(".").rglob("*")) == before  # the folder is as it was
    assert capsys.readouterr() == ("", "")
    assert run.run_dir is None and run.status == "finished" and len(run.history) == 1
    assert run.test_accuracy == run.history[-1]["test_accuracy"] > 0.2
    assert isinstance(run.model, torch.nn.Module) and run.config.train.epochs == 1
    assert isinstance(run.plot(), Figure)
    assert "in memory" in repr(run)


def test_verbose_in_memory_prints_the_epoch_lines(tiny_data_dir, capsys):
    lenet.train(tiny(tiny_data_dir, epochs=1), verbose=True)
    out = capsys.readouterr().out
    assert "run (in memory)" in out and "epoch 1/1" in out


def test_training_to_disk_makes_the_cli_run_directory_and_load_reads_it_back(tiny_data_dir):
    run = lenet.train(tiny(tiny_data_dir, name="disk"), out="runs")
    assert run.run_dir == Path("runs/disk")
    assert {"config.yaml", "metrics.jsonl", "model.safetensors", "checkpoint.pt", "status.json"} <= {
        p.name for p in run.run_dir.iterdir()}
    loaded = lenet.load("runs/disk")
    assert loaded.history == run.history and loaded.config == run.config and loaded.status == "finished"
    for key, value in run.model.state_dict().items():
        assert torch.equal(value.cpu(), loaded.model.state_dict()[key])
    from_file = lenet.load("runs/disk/model.safetensors")
    assert from_file.history == run.history  # a run directory's own model file loads the whole run
    run.save("alone.safetensors")
    alone = lenet.load("alone.safetensors")
    assert alone.run_dir is None and alone.config == run.config


def test_load_of_an_interrupted_run_gives_its_last_checkpoint(tiny_data_dir):
    class Stop(Exception):
        pass

    def stop_after_first(row):
        raise Stop

    with pytest.raises(Stop):
        lenet.train(tiny(tiny_data_dir, name="cut", epochs=3), out="runs", on_epoch=stop_after_first)
    loaded = lenet.load("runs/cut")
    assert len(loaded.history) == 1 and loaded.status == "failed"  # the hook's exception stopped it
    resumed = lenet.resume("runs/cut")
    assert len(resumed.history) == 3 and lenet.load("runs/cut").status == "finished"


def test_on_epoch_sees_every_row_and_until_ends_the_run_early_as_finished(tiny_data_dir):
    seen = []
    run = lenet.train(tiny(tiny_data_dir, epochs=6, name="early"), out="runs", on_epoch=seen.append,
                      until=lambda row: row["epoch"] == 2)
    assert [r["epoch"] for r in seen] == [1, 2] and len(run.history) == 2
    status = json.loads(Path("runs/early/status.json").read_text())
    assert status == {"status": "finished", "epoch": 2}
    assert "stopping after epoch 2: the target is reached" in Path("runs/early/train.log").read_text()


def test_a_dataset_the_caller_built_trains(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 10
    images = make_images(labels, rng)  # uint8 (N, 28, 28), the IDX shape
    data = {"train": (images[:300], labels[:300]), "test": (torch.from_numpy(images[300:]), labels[300:])}
    run = lenet.train(lenet.config("keras-v2-scaled", epochs=3, device="cpu"), data=data)
    assert run.test_accuracy > 0.5  # the bars are easy: chance is 0.1
    with pytest.raises(UsageError, match="images must be uint8"):
        lenet.train(lenet.config("d2l", epochs=1), data={"train": (images.astype(float), labels), "test": data["test"]})
    with pytest.raises(lenet.DataError, match=r"label -1 is out of range"):
        lenet.train(lenet.config("d2l", epochs=1), data={"train": (images, labels - 1), "test": data["test"]})
    with pytest.raises(lenet.DataError, match="the training set is empty"):
        lenet.train(lenet.config("d2l", epochs=1), data={"train": (images[:0], labels[:0]), "test": data["test"]})


@pytest.mark.slow
def test_evaluate_a_run_in_memory_gives_the_eval_report(tiny_data_dir):
    run = lenet.train(tiny(tiny_data_dir, epochs=1))
    report = lenet.evaluate(run, data_dir=str(tiny_data_dir))
    assert report.accuracy == pytest.approx(run.test_accuracy, abs=1e-6)
    assert report.confusion.sum() == 200 and len(report.per_class_accuracy) == 10
    mistakes = report.worst_mistakes(5)
    assert all(m.true != m.predicted for m in mistakes)
    assert [m.confidence for m in mistakes] == sorted((m.confidence for m in mistakes), reverse=True)
    assert isinstance(report.plot_confusion(), Figure) and isinstance(report.plot_mistakes(8), Figure)
    assert "test accuracy" in str(report)
    written = report.save("eval-out")
    assert {p.name for p in written} == {"confusion.png", "misclassified.png", "most_confused.csv", "eval.json"}


def test_summary_of_names_presets_configs_and_runs(tiny_data_dir):
    assert lenet.summary("d2l").parameters == 61_706 and lenet.summary("lenet5").mult_adds == 416_520
    cfg = lenet.config("d2l", set={"model.conv_channels": [4, 8]})
    assert lenet.summary(cfg).parameters < 61_706
    assert "conv1" in str(lenet.summary(cfg))
    with pytest.raises(UsageError, match="neither a model"):
        lenet.summary("no-such-thing")
