"""examples/: the README's worked example on real third-party data, end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import lenet

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_sklearn_digits_as_a_png_folder_train_well(tmp_path):
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    spec = importlib.util.spec_from_file_location("sklearn_digits", EXAMPLES / "sklearn_digits.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.write(tmp_path / "digits") == 1797
    cfg = lenet.config("speedrun-mnist", epochs=8, device="cpu", image_size=28)
    run = lenet.train(cfg, data=tmp_path / "digits")
    assert run.class_names == tuple(str(d) for d in range(10))
    assert run.config.model.input_size == 28 and run.history[-1]["test_accuracy"] > 0.95
    counts = np.bincount(load_digits().target)
    assert len(lenet.load_data(run.config).test) == sum(round(0.2 * c) for c in counts)  # a fifth of each digit
