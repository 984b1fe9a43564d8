"""The `lenet` command in-process: exit codes, output, files, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lenet.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def train_tiny(capsys, data_dir, name="r", *extra):
    return run(capsys, "train", "--preset", "keras-v2", "--data-dir", str(data_dir), "--epochs", "2",
               "--device", "cpu", "--name", name, *extra)


def test_summary_of_d2l_preset_matches_the_chapter(capsys):
    code, out, _ = run(capsys, "summary", "d2l")
    assert code == 0
    for shape in ("6x28x28", "6x14x14", "16x10x10", "16x5x5", "400", "120", "84", "10"):
        assert f" {shape} " in out
    assert "61,706" in out and "416,520" in out


def test_summary_json_and_of_a_config_file(capsys, tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text("model:\n  conv_channels: [8, 16, 32]\n  kernel_size: 3\n  padding: 1\n")
    code, out, _ = run(capsys, "summary", str(path), "--json")
    rows = json.loads(out)
    assert code == 0 and [r["output_shape"] for r in rows if r["name"] == "pool3"] == [[32, 3, 3]]


def test_models_lists_the_registry(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "lenet5 " in out and "61,706" in out and "lenet5-v2" in out


def test_train_eval_plot_round_trip(capsys, tiny_data_dir):
    code, out, _ = train_tiny(capsys, tiny_data_dir, "first")
    assert code == 0
    assert "epoch 1/2" in out and "val acc" in out and "ex/s" in out
    assert "examples/sec on cpu" in out
    run_dir = Path("runs/first")
    code, out, _ = run(capsys, "eval", str(run_dir), "--data-dir", str(tiny_data_dir))
    assert code == 0 and "test accuracy" in out and "Pullover" in out
    ev = json.loads((run_dir / "eval.json").read_text())
    final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert ev["test_accuracy"] == pytest.approx(final["test_accuracy"])
    assert sum(map(sum, ev["confusion_matrix"])) == 200
    assert (run_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert train_tiny(capsys, tiny_data_dir, "second", "--seed", "1")[0] == 0
    code, out, _ = run(capsys, "plot", "runs/first", "runs/second", "--out", "both.png")
    assert code == 0 and Path("both.png").stat().st_size > 10_000


def test_flags_reach_the_config(capsys, tiny_data_dir):
    code, out, _ = run(capsys, "train", "--preset", "d2l", "--lr", "0.3", "--optimizer", "adamw",
                       "--weight-decay", "0.01", "--schedule", "cosine", "--label-smoothing", "0.1",
                       "--val-split", "0.2", "--dataset", "mnist", "--batch-size", "32", "--epochs", "7",
                       "--seed", "5", "--model", "lenet5-bn", "--set", "model.pool=max", "--print-config")
    assert code == 0
    import yaml

    cfg = yaml.safe_load(out)
    assert cfg["optim"] == {**cfg["optim"], "lr": 0.3, "optimizer": "adamw", "weight_decay": 0.01,
                            "schedule": "cosine", "label_smoothing": 0.1}
    assert (cfg["data"]["val_split"], cfg["data"]["dataset"], cfg["train"]["batch_size"]) == (0.2, "mnist", 32)
    assert (cfg["train"]["epochs"], cfg["seed"]) == (7, 5)
    assert (cfg["model"]["batch_norm"], cfg["model"]["pool"]) == (True, "max")


def test_dry_run_on_mnist(capsys, tiny_data_dir):
    code, out, _ = run(capsys, "train", "--dataset", "mnist", "--data-dir", str(tiny_data_dir),
                       "--dry-run", "--name", "smoke", "--device", "cpu")
    assert code == 0 and "epoch 1/1" in out
    assert json.loads(Path("runs/smoke/status.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
    "argv, code, needle",
    [
        (["train", "--set", "optim.lrr=1"], 2, "did you mean 'optim.lr'"),
        (["train", "--lr", "0"], 2, "optim.lr = 0"),
        (["train", "--preset", "d3l"], 2, "unknown preset"),
        (["train", "--model", "alexnet"], 2, "unknown model"),
        (["summary", "nothing-here"], 2, "neither a model"),
        (["eval", "no-such-run"], 1, "no such model file"),
        (["plot", "no-such-run"], 1, "not a run directory"),
        (["train", "--device", "cuda:7", "--dry-run"], 2, None),
    ],
)
def test_errors_map_to_exit_codes(capsys, argv, code, needle):
    got, _, err = run(capsys, *argv)
    assert got == code
    if needle:
        assert needle in err
    assert "Traceback" not in err


def test_missing_data_lists_every_place_searched(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data-dir", str(tmp_path / "empty"), "--dry-run")
    assert code == 1
    assert "--data-dir" in err and "user cache" in err and "Debian package" in err and "lenet download" in err


def test_usage_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "many"])
    assert info.value.code == 2
