"""`lenet eval` on tiny data: the most-confused pairs and the grid of misclassified images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image

from lenet.cli import main
from lenet.use.evaluation import evaluate


def test_eval_writes_confused_pairs_and_misclassified_grid(capsys, tiny_data_dir):
    # One short epoch of the sigmoid recipe leaves plenty of mistakes to show.
    assert main(["train", "--preset", "d2l", "--data-dir", str(tiny_data_dir), "--epochs", "1",
                 "--batch-size", "64", "--device", "cpu", "--name", "r"]) == 0
    capsys.readouterr()
    assert main(["eval", "runs/r", "--data-dir", str(tiny_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "most confused" in out and "misclassified.png" in out

    run = Path("runs/r")
    ev = evaluate(run, data_dir=str(tiny_data_dir), device="cpu")
    pairs = list(csv.DictReader(Path(run / "most_confused.csv").read_text().splitlines()))
    expected = ev.most_confused(10)
    assert [(p["true"], p["predicted"], int(p["count"])) for p in pairs] == expected
    first_true = ev.class_names.index(expected[0][0])
    assert float(pairs[0]["share_of_true_class"]) == round(expected[0][2] / ev.confusion[first_true].sum(), 4)
    saved = json.loads((run / "eval.json").read_text())["most_confused"][0]
    assert (saved["true"], saved["predicted"], saved["count"]) == expected[0]

    mistakes = int((ev.predictions != ev.labels).sum())
    assert mistakes >= 32
    pixels = matplotlib.image.imread(run / "misclassified.png")
    height, width = pixels.shape[:2]
    assert width > 1000 and height > 600  # 8 columns x 4 rows of images with titles
