"""Reports are one HTML file with every image inside and nothing fetched from outside."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_sweep import fake_sweep

from lenet.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_self_contained(text: str) -> None:
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert references, "no images at all"
    assert all(ref.startswith("data:image/png;base64,") for ref in references), references
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "@import" not in text


@pytest.mark.slow
def test_report_of_a_run_embeds_curves_evaluation_and_feature_maps(capsys, tiny_data_dir):
    assert run(capsys, "train", "--preset", "d2l", "--data-dir", tiny_data_dir, "--epochs", "1",
               "--batch-size", "64", "--device", "cpu", "--name", "r")[0] == 0
    assert run(capsys, "eval", "runs/r", "--data-dir", tiny_data_dir)[0] == 0
    assert run(capsys, "activations", "runs/r", "--classes", "bag")[0] == 0
    code, out, _ = run(capsys, "report", "runs/r")
    assert code == 0 and "runs/r/report.html" in out
    text = Path("runs/r/report.html").read_text()
    assert_self_contained(text)
    # curves, confusion, misclassified, one activations picture
    assert text.count("data:image/png;base64,") == 4
    assert "Most confused pairs" in text and "<h2>Config</h2>" in text and "test-" in text


def test_report_of_a_sweep_has_the_summary_and_plots(capsys, tmp_path):
    sweep_dir = fake_sweep(tmp_path / "runs")
    code, _, _ = run(capsys, "report", sweep_dir, "--out", tmp_path / "page.html")
    assert code == 0
    text = (tmp_path / "page.html").read_text()
    assert_self_contained(text)
    assert text.count("data:image/png;base64,") == 2  # accuracy bars and curves (fake runs have no curves.png)
    assert "0.8200 ± 0.0200" in text and "optim.lr=0.1" in text and "diverged" in text
    assert 'class="baseline"' in text


def test_report_of_something_else_is_exit_1(capsys, tmp_path):
    code, _, err = run(capsys, "report", tmp_path)
    assert code == 1 and "not a sweep (sweep.json), a search (search.json) or a run directory" in err
