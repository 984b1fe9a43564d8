"""Every fault a user can cause or meet, through the CLI: the exit code, one clear
message on stderr naming the file or field, never a traceback, and no run lost.

Exit codes (errors.py): 1 runtime failure (data, divergence, I/O), 2 usage or config.
The CLI runs in-process (``lenet.cli.main``), on the tiny datasets of conftest.py.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lenet.data.datasets
import lenet.store.runs
import lenet.store.files
import lenet.training.learners
from conftest import write_tiny_dataset
from lenet.store.checkpoint import load_checkpoint
from lenet.cli import main
from lenet.data.idx import write_idx
from lenet.errors import EXIT_DATA

TRAIN_IMAGES = "fashion-mnist/train-images-idx3-ubyte.gz"
TRAIN_LABELS = "fashion-mnist/train-labels-idx1-ubyte.gz"
TEST_IMAGES = "fashion-mnist/t10k-images-idx3-ubyte.gz"


def train_args(data_dir: Path, *extra: str, name: str = "run", epochs: int = 3) -> list[str]:
    return ["train", "--preset", "keras-v2-scaled", "--data-dir", str(data_dir), "--out", "runs", "--name", name,
            "--epochs", str(epochs), "--device", "cpu", "--set", "train.progress=never", *extra]


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(err: str, code: int, expected_code: int, command: str = "train") -> None:
    assert code == expected_code, err
    assert err.startswith(f"lenet {command}: error: "), err
    assert "Traceback" not in err and 'File "' not in err, err


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def epochs_in(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread: a busy 2-core machine runs these tiny models faster than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- data faults


def _rewrite_gz(path: Path, edit) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes())), mtime=0))


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


def _flip_crc(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 of the gzip trailer: the deflate stream itself is intact
    path.write_bytes(bytes(data))


def _labels_out_of_range(path: Path) -> None:
    write_idx(path, np.full(600, 10, dtype=np.uint8))


# name -> (file damaged, how, what the message must say)
DATA_FAULTS = {
    "empty file": (TRAIN_IMAGES, lambda p: p.write_bytes(b""), r"0 bytes is too short for an IDX header"),
    "truncated gzip": (TRAIN_IMAGES, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
                       r"truncated gzip file \(the download was probably cut off\)"),
    "gzip bytes flipped": (TRAIN_IMAGES, _flip_middle, r"corrupt gzip data"),
    "gzip checksum flipped": (TRAIN_IMAGES, _flip_crc, r"corrupt gzip data \(CRC check failed"),
    "wrong IDX magic": (TRAIN_IMAGES, lambda p: _rewrite_gz(p, lambda d: b"\x12\x34" + d[2:]),
                        r"not an IDX file \(magic number 12340803"),
    "unknown IDX type": (TRAIN_IMAGES, lambda p: _rewrite_gz(p, lambda d: d[:2] + b"\x42" + d[3:]),
                         r"not an IDX file \(magic number 00004203"),
    "HTML instead of data": (TRAIN_IMAGES, lambda p: p.write_bytes(b"<!DOCTYPE html><html>captive portal</html>"),
                             r"not an IDX file \(magic number 3c21444f"),
    "payload truncated": (TRAIN_IMAGES, lambda p: _rewrite_gz(p, lambda d: d[:-100]),
                          r"header says shape \(600, 28, 28\) \(470400 data bytes\) but the file holds "
                          r"470300 data bytes"),
    "image/label count mismatch": (TRAIN_LABELS, lambda p: _rewrite_gz(p, lambda d: d[:7] + b"\x57" + d[8:-1]),
                                   r"holds 600 images but .*train-labels-idx1-ubyte\.gz holds 599 labels"),
    "20x20 images": (TRAIN_IMAGES, lambda p: write_idx(p, np.zeros((600, 20, 20), np.uint8)),
                     r"expected 28x28 images; got 20x20"),
    "labels file holds images": (TRAIN_LABELS, lambda p: shutil.copyfile(p.parent / "t10k-images-idx3-ubyte.gz", p),
                                 # refused while it is read: over the size a labels file has
                                 r"decompresses to over 60,008 bytes, more than this file can hold"),
    "label out of range": (TRAIN_LABELS, _labels_out_of_range, r"label 10 out of range for 10 classes"),
    "test file corrupt": (TEST_IMAGES, lambda p: p.write_bytes(p.read_bytes()[:100]), r"truncated gzip file"),
}


@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_a_damaged_data_file_is_one_clear_line_naming_it(tiny_data_dir, capsys, fault):
    relative, damage, message = DATA_FAULTS[fault]
    path = tiny_data_dir / relative
    damage(path)
    code, _, err = run_cli(capsys, train_args(tiny_data_dir))
    assert_clean_failure(err, code, EXIT_DATA)
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert f"{path}:" in err or f"{path} holds" in err, f"the message should name {path}: {err}"
    # Nothing of a run was written, so no folder is left to look like one, and the same
    # --name works once the file is fixed.
    assert not Path("runs/run").exists()
    assert lenet.store.runs.create_run_dir(Path("runs"), "run") == Path("runs/run")


def test_a_missing_data_file_says_where_it_looked_and_how_to_get_it(tiny_data_dir, capsys, monkeypatch):
    (tiny_data_dir / TRAIN_LABELS).unlink()
    code, _, err = run_cli(capsys, train_args(tiny_data_dir))
    assert_clean_failure(err, code, EXIT_DATA)
    first, *rest = err.strip().splitlines()
    assert "dataset 'fashion-mnist' not found" in first and "train-labels-idx1-ubyte.gz" in first
    assert any(str(tiny_data_dir / "fashion-mnist") in line for line in rest)
    assert "lenet download fashion-mnist" in err


# --------------------------------------------------------------------------- config faults


@pytest.fixture
def config_files(tmp_path) -> dict[str, Path]:
    files = {
        "bad.yaml": "optim:\n  lr: [0.1\ntrain:\n  epochs: 3\n",
        "bad.toml": "[optim\nlr = 0.1\n",
        "list.yaml": "- lr: 0.1\n",
        "typo.yaml": "optim:\n  learnig_rate: 0.1\n",
        "type.toml": '[optim]\nlr = "fast"\n',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {name: tmp_path / name for name in files}


# name -> (arguments after `lenet train`, what the message must say: field and value)
CONFIG_FAULTS = {
    "unknown key": (["--set", "optim.lrr=0.1"], r"unknown key 'optim\.lrr'; did you mean 'optim\.lr'\?"),
    "unknown section": (["--set", "trian.epochs=3"], r"unknown key 'trian'; did you mean 'train'\?"),
    "unknown key in a file": (["--config", "typo.yaml"],
                              r"config file typo\.yaml:\n  unknown key 'optim\.learnig_rate'.*valid here: .*lr"),
    "wrong type": (["--set", "optim.lr=fast"], r'optim\.lr = "fast": Input should be a valid number'),
    "wrong type in a file": (["--config", "type.toml"], r'config file type\.toml:\n  optim\.lr = "fast"'),
    "not a boolean": (["--set", "model.batch_norm=maybe"],
                      r'model\.batch_norm = "maybe": Input should be a valid boolean'),
    "value for a section": (["--set", "optim=3"], r"optim = 3: Input should be a valid dictionary"),
    "lr zero": (["--lr", "0"], r"optim\.lr = 0\.0: Input should be greater than 0"),
    "lr negative": (["--lr", "-0.1"], r"optim\.lr = -0\.1: Input should be greater than 0"),
    "batch size 0": (["--batch-size", "0"], r"train\.batch_size = 0: Input should be greater than or equal to 1"),
    "epochs 0": (["--epochs", "0"], r"train\.epochs = 0: Input should be greater than or equal to 1"),
    "dropout 1": (["--set", "model.dropout=1.0"], r"model\.dropout = 1\.0: Input should be less than 1"),
    "dropout negative": (["--set", "model.dropout=-0.5"], r"model\.dropout = -0\.5: Input should be greater"),
    "momentum 1": (["--momentum", "1"], r"optim\.momentum = 1\.0: Input should be less than 1"),
    "val split 1": (["--val-split", "1"], r"data\.val_split = 1\.0: Input should be less than 1"),
    "val split negative": (["--val-split", "-0.1"], r"data\.val_split = -0\.1: Input should be greater"),
    "zero width": (["--set", "model.dense=[120, 0]"], r"model\.dense = \[120, 0\]: every width must be >= 1"),
    "kernel list length": (["--set", "model.kernel_size=[5, 5, 5]"],
                           r"model: kernel_size has 3 values but there are 2 conv blocks"),
    "kernel larger than the map": (["--set", "model.kernel_size=[5, 30]"],
                                   r"impossible architecture: conv2 \(kernel 30, padding 0\) gets a 6x14x14 input"),
    "pooled below 1x1": (["--set", "model.conv_channels=[6, 16, 32, 64]", "--set", "model.padding=[2, 0, 0, 0]"],
                         r"impossible architecture: pool3 \(size 2, stride 2\) gets a 32x1x1 input"),
    "device": (["--device", "gpu"], r'device = "gpu": must be auto, cpu, cuda, cuda:N or mps'),
    "YAML syntax": (["--config", "bad.yaml"],
                    r"config file bad\.yaml: YAML syntax error at line 3, column 6: expected ',' or ']'"),
    "TOML syntax": (["--config", "bad.toml"], r"config file bad\.toml: TOML syntax error: .*line 1"),
    "config not a mapping": (["--config", "list.yaml"], r"config file list\.yaml: expected a mapping .*got list"),
    "config file missing": (["--config", "nope.yaml"], r"config file nope\.yaml not found"),
    "unknown preset": (["--preset", "d2m"], r"unknown preset 'd2m'; did you mean 'd2l'\?"),
    "unknown model": (["--model", "lenet9"], r"unknown model 'lenet9'; `lenet models` lists: .*lenet5"),
    "override without =": (["--set", "optim.lr"], r"override 'optim\.lr' is not KEY=VALUE"),
}


@pytest.mark.parametrize("fault", list(CONFIG_FAULTS))
def test_a_bad_config_value_names_the_field_and_exits_2(config_files, capsys, fault):
    args, message = CONFIG_FAULTS[fault]
    code, out, err = run_cli(capsys, ["train", *args, "--print-config"])
    assert_clean_failure(err, code, 2)
    assert re.search(message, err, re.DOTALL), err
    assert out == "" and not Path("runs").exists()


def test_a_flag_of_the_wrong_type_is_an_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--batch-size", "ten"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --batch-size: invalid int value: 'ten'" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- divergence


def test_a_huge_learning_rate_stops_at_the_bad_step_with_advice(tiny_data_dir, capsys):
    args = train_args(tiny_data_dir, "--optimizer", "sgd", "--lr", "100", "--set", "model.dropout=0")
    code, _, err = run_cli(capsys, args)
    assert_clean_failure(err, code, 1)
    assert re.search(r"loss became NaN or infinite at step \d+\. Try a lower learning rate \(--lr\)", err), err
    run = Path("runs/run")
    status = json.loads((run / "status.json").read_text())
    assert (status["status"], status["epoch"]) == ("diverged", 1)
    assert "no epoch had finished, so there is no checkpoint" in status["reason"] and status["reason"] in err
    assert not (run / "model.safetensors").exists()


def test_divergence_after_a_good_epoch_keeps_that_epoch_loadable(tiny_data_dir, capsys, monkeypatch):
    # A schedule that turns lr 0.1 into 1e5 after the first epoch (9 steps): epoch 1
    # learns, epoch 2 blows up, as a run whose warm-up goes too high would.
    monkeypatch.setattr(lenet.training.learners, "lr_factor", lambda cfg, step, steps_per_epoch:
                        1.0 if step < steps_per_epoch else 1e6)
    args = train_args(tiny_data_dir, "--optimizer", "sgd", "--lr", "0.1", "--set", "model.dropout=0")
    code, out, err = run_cli(capsys, args)
    assert_clean_failure(err, code, 1)
    step = int(re.search(r"at step (\d+)\. Try a lower learning rate", err).group(1))
    assert 10 <= step <= 18, f"step {step} is not in epoch 2 (steps 10-18)"
    run = Path("runs/run")
    status = json.loads((run / "status.json").read_text())
    assert (status["status"], status["epoch"]) == ("diverged", 2)
    assert "the checkpoint of epoch 1 is kept" in status["reason"] and "checkpoint of epoch 1 is kept" in err
    assert not (run / "model.safetensors").exists()
    saved = load_checkpoint(run)
    assert saved["epoch"] == 1 and epochs_in(run) == [1]
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert "epoch 1/3" in out and saved["metrics"][0]["test_accuracy"] > 0.5  # it did learn (chance: 0.1)


# --------------------------------------------------------------------------- output faults


def test_an_existing_run_directory_is_never_overwritten(tiny_data_dir, capsys):
    args = train_args(tiny_data_dir, "--dry-run")
    assert run_cli(capsys, args)[0] == 0
    run = Path("runs/run")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    code, _, err = run_cli(capsys, train_args(tiny_data_dir, "--seed", "7"))
    assert_clean_failure(err, code, 1)
    assert f"run directory {run} already exists" in err and f"--resume {run}" in err and "--exist-ok" in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before


@pytest.mark.parametrize("out", ["file.txt/runs", "file.txt"], ids=["under-a-file", "is-a-file"])
def test_an_unwritable_out_folder_is_a_clear_error(tiny_data_dir, capsys, out):
    # Tests run as root, where chmod stops no write: a path through a regular file
    # fails for everyone (ENOTDIR).
    Path("file.txt").write_text("keep me\n")
    args = train_args(tiny_data_dir)
    args[args.index("--out") + 1] = out
    code, _, err = run_cli(capsys, args)
    assert_clean_failure(err, code, 1)
    assert f"cannot write to {out}/run: Not a directory; choose another --out" in err
    assert Path("file.txt").read_text() == "keep me\n"


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run, to compare runs that met a fault against."""
    home = tmp_path_factory.mktemp("clean")
    write_tiny_dataset(home / "data" / "fashion-mnist")
    args = train_args(home / "data")
    args[args.index("--out") + 1] = str(home / "runs")
    assert main(args) == 0
    return home / "runs" / "run"


def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_resume_finishes_exactly(
        tiny_data_dir, clean_run, capsys):
    real_replace, renames = os.replace, []

    def disk_full_at_second_checkpoint(src, dst):
        renames.append(Path(dst).name)
        if renames.count("checkpoint.pt") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    with pytest.MonkeyPatch.context() as patch:  # the disk is full until this block ends
        patch.setattr(lenet.store.files.os, "replace", disk_full_at_second_checkpoint)
        code, _, err = run_cli(capsys, train_args(tiny_data_dir))
    assert_clean_failure(err, code, 1)
    run = Path("runs/run")
    assert (f"cannot write {run}/checkpoint.pt: No space left on device; files saved before are intact"
            in err)
    assert load_checkpoint(run)["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not (run / "model.safetensors").exists()

    code, _, err = run_cli(capsys, ["train", "--resume", str(run)])
    assert code == 0, err
    assert epochs_in(run) == [1, 2, 3]  # epoch 2's row, written before the failure, appears once
    got, want = weights(run), weights(clean_run)
    assert all(torch.equal(got[k], want[k]) for k in want)


# --------------------------------------------------------------------------- reproducibility


@pytest.fixture
def restore_determinism(monkeypatch):
    """--deterministic switches torch globally; give the next test the state it expects."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # train sets it; monkeypatch unsets it
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_deterministic_runs_with_one_seed_are_identical(tiny_data_dir, capsys, restore_determinism):
    for name in ("a", "b"):
        code, _, err = run_cli(capsys, train_args(tiny_data_dir, "--deterministic", "--seed", "3",
                                                  name=name, epochs=2))
        assert code == 0, err
    a, b = Path("runs/a"), Path("runs/b")
    timing = ("epoch_seconds", "examples_per_second")

    def metrics(run):
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert metrics(a) == metrics(b) and len(metrics(a)) == 2
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "deterministic: true" in (a / "config.yaml").read_text()
