"""The `lenet` command in-process: exit codes, output, files, on tiny data."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from lenet import cli
from lenet.cli import main
from lenet.errors import EXIT_DATA


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def train_tiny(capsys, data_dir, name="r", *extra):
    return run(capsys, "train", "--preset", "keras-v2-scaled", "--data-dir", str(data_dir), "--epochs", "2",
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


@pytest.mark.slow
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
        (["eval", "no-such-run"], 1, "no-such-run: no such model file or run directory"),
        (["plot", "no-such-run"], 1, "no-such-run: no such model file or run directory"),
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
    assert code == EXIT_DATA
    assert "--data-dir" in err and "user cache" in err and "Debian package" in err and "lenet download" in err


def test_usage_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "many"])
    assert info.value.code == 2


def test_the_process_collects_no_garbage_while_importing_and_none_at_exit(monkeypatch):
    seen = {}
    build = cli.build_parser

    def build_parser():
        seen["collecting while importing"] = gc.isenabled()
        return build()

    def cmd_models(args):  # the parser binds its command when built, so this one runs
        seen["collecting while the command runs"] = gc.isenabled()
        seen["frozen while the command runs"] = gc.get_freeze_count()
        return 0

    monkeypatch.setattr(cli, "build_parser", build_parser)
    monkeypatch.setattr(cli, "cmd_models", cmd_models)
    monkeypatch.setattr("sys.argv", ["lenet", "models"])
    assert gc.get_freeze_count() == 0
    try:
        with pytest.raises(SystemExit) as info:
            cli.entry()
        left_for_the_collector = len(gc.get_objects())
    finally:
        gc.unfreeze()
        gc.enable()
    assert info.value.code == 0
    assert seen["collecting while importing"] is False
    assert seen["collecting while the command runs"] is True
    assert seen["frozen while the command runs"] > 10_000  # torch's objects, the parser's, pytest's
    assert left_for_the_collector < 100  # only what pytest.raises made after the freeze


# --------------------------------------------------------------------------- a new user's first hour


@pytest.mark.parametrize("columns", ["60", "100"])
def test_help_lists_come_from_their_registries(capsys, monkeypatch, columns):
    from lenet.model.network import list_models
    from lenet.configuration.presets import PRESETS

    monkeypatch.setenv("COLUMNS", columns)  # argparse wraps to the terminal: never inside `best-mnist`

    for argv in (["train", "-h"], ["bench", "-h"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert all(p in text for p in PRESETS), argv
    with pytest.raises(SystemExit):
        main(["train", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(m in text for m in list_models()) and "djl" in text


@pytest.mark.parametrize("argv, hint", [
    (["train", "--epoch", "1"], "--epoch (did you mean --epochs?)"),  # no abbreviations
    (["train", "--learning-rate", "0.1"], "--learning-rate (did you mean --lr?)"),
    (["train", "--batchsize", "8"], "(did you mean --batch-size?)"),
    (["eval", "runs/x", "--jsn"], "--jsn (did you mean --json?)"),
])
def test_a_mistyped_flag_gets_its_commands_usage_and_the_closest_flag(capsys, argv, hint):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and hint in err
    assert f"usage: lenet {argv[0]}" in err  # the subcommand's usage, not the top level's


def test_presets_match_whatever_the_case(capsys):
    assert run(capsys, "train", "--preset", "D2L", "--print-config")[0] == 0
    code, _, err = run(capsys, "train", "--preset", "d2k")
    assert code == 2 and "did you mean 'd2l'" in err


def test_predict_with_its_arguments_swapped_says_which_is_which(capsys, tiny_data_dir, tmp_path):
    train_tiny(capsys, tiny_data_dir, "m", "--epochs", "1")
    from PIL import Image

    picture = tmp_path / "shoe.png"
    Image.new("L", (28, 28), 255).save(picture)
    code, _, err = run(capsys, "predict", str(picture), "runs/m")
    assert code == 2 and "a picture: the model" in err and "runs/m looks like the model: give it first" in err


@pytest.mark.slow
def test_runs_are_found_by_name_prefix_or_latest(capsys, tiny_data_dir):
    import os
    import time

    train_tiny(capsys, tiny_data_dir, "d2l-fashion-mnist-1", "--epochs", "1")
    time.sleep(0.05)
    train_tiny(capsys, tiny_data_dir, "keras-v2-fashion-mnist-2", "--epochs", "1")
    time.sleep(0.05)  # file times tick in milliseconds here: make "newer" unambiguous
    os.utime("runs/d2l-fashion-mnist-1/status.json")  # d2l-... is now the newest
    code, out, err = run(capsys, "eval", "runs/keras", "--data-dir", str(tiny_data_dir))
    assert code == 0 and "keras: using runs/keras-v2-fashion-mnist-2" in err and "test accuracy" in out
    code, _, err = run(capsys, "eval", "latest", "--data-dir", str(tiny_data_dir))
    assert code == 0 and "latest: using runs/d2l-fashion-mnist-1" in err
    code, _, err = run(capsys, "plot", "d2l", "keras")
    assert code == 0 and Path("runs/curves-compared.png").is_file()  # beside the runs, not in ./


def test_a_dry_run_is_marked_and_is_not_taken_for_a_run(capsys, tiny_data_dir):
    assert run(capsys, "train", "--data-dir", str(tiny_data_dir), "--name", "smoke", "--dry-run")[0] == 0
    status = json.loads(Path("runs/smoke/status.json").read_text())
    assert status["status"] == "finished" and status["dry_run"] is True
    code, _, err = run(capsys, "plot", "runs/smoke")
    assert code == 1 and "a dry run" in err
    code, _, err = run(capsys, "eval", "latest", "--data-dir", str(tiny_data_dir))
    assert code == 1 and "no run under runs/" in err  # latest skips the dry run


def test_data_verify_prints_the_checksums(capsys, tiny_data_dir):
    code, out, err = run(capsys, "data", "--data-dir", str(tiny_data_dir), "--verify")
    assert code == EXIT_DATA  # the tiny files are not the published ones
    assert "BAD sha256 " in out and "(expected " in out and "do not match" in err


def test_djl_preset_prints_the_djl_network(capsys):
    code, out, _ = run(capsys, "summary", "djl")
    assert code == 0 and "61,700" in out  # no bias in conv1: 6 fewer parameters than d2l's
    assert " 6x14x14 " in out and " 16x5x5 " in out  # 5x5 pooling, stride 2, padding 2
    from lenet.api import config
    from lenet.model.network import LeNet

    model = LeNet(config("djl").model)
    assert model.features.conv1.bias is None and model.features.pool1.padding == 2
    assert model.features.conv1.weight.std().item() < 0.02  # normal(0, 0.01), not Xavier
