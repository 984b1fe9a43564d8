"""`lenet bench`: the real loop, in memory, stopping at its target by the loop's own condition."""

from __future__ import annotations

import json
from pathlib import Path

from lenet.experiments.bench import bench, format_bench
from lenet.cli import main
from lenet.configuration.build import build_config


def test_bench_stops_at_the_target_and_writes_nothing(tiny_data_dir):
    cfg = build_config("keras-v2-scaled", overrides=[f"data.data_dir={tiny_data_dir}", "device=cpu", "train.epochs=8"])
    result = bench(cfg, target=0.5, eval_repeats=1)
    assert result.seconds_to_target is not None and result.final_test_accuracy >= 0.5
    assert result.epochs_run < 8 and result.epochs_run == len(result.test_accuracies)
    assert all(a < 0.5 for a in result.test_accuracies[:-1])  # it stopped at the first epoch that got there
    assert result.examples_per_second > 0 and result.eval_images_per_second > 0
    assert result.speed["fused_layers"] is True and "fused layers" in format_bench(result)  # the CPU's default
    assert list(Path(".").rglob("*.safetensors")) == [] and not Path("runs").exists()


def test_bench_cli_json(tiny_data_dir, capsys):
    assert main(["bench", "--preset", "keras-v2-scaled", "--data-dir", str(tiny_data_dir), "--device", "cpu",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs_run"] == 1 and result["target"] is None and result["device"] == "cpu"
