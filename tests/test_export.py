"""ONNX export: dynamic batch, metadata, and onnxruntime agreeing with PyTorch."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from lenet.cli import main
from lenet.use.export import check_onnx, export_onnx, onnx_logits, read_metadata
from lenet.use.predict import Predictor
import models_fixture


# Session fixtures, trained once for all test modules (see models_fixture.py).
mnist_model = models_fixture.mnist_model

def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def untrained(tmp_path, normalize: str):
    """An untrained keras-v2 MNIST model file whose pixels go in as ``normalize`` says."""
    from lenet.configuration.build import build_config
    from lenet.data.datasets import get_spec
    from lenet.model.network import LeNet
    from lenet.store.models import MODEL_FILE, save_model

    cfg = build_config("keras-v2", overrides=["data.dataset=mnist", f"data.normalize={normalize}"])
    save_model(tmp_path / MODEL_FILE, LeNet(cfg.model).eval(), cfg, get_spec("mnist").class_names)
    return tmp_path


@pytest.mark.parametrize("normalize, scale, shift", [("raw", 1.0, 0.0), ("unit", 1 / 255, 0.0),
                                                     ("standard", 1 / (255 * 0.3081), 0.1307 / 0.3081)])
def test_export_has_dynamic_batch_and_metadata(tmp_path, normalize, scale, shift):
    model = untrained(tmp_path, normalize)
    path = export_onnx(model, tmp_path / "lenet.onnx")
    meta = read_metadata(path)
    assert meta["format"] == "lenet-onnx/1" and meta["dataset"] == "mnist"
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert (meta["normalize"], meta["mean"], meta["std"]) == (normalize, 0.1307, 0.3081)
    assert meta["input_scale"] == pytest.approx(scale) and meta["input_shift"] == pytest.approx(shift)
    assert meta["input_shape"] == ["batch", 1, 28, 28]
    assert meta["framing"] == {"box": 20, "centre": "mass", "mass_centre": 14.0}
    assert meta["config"]["model"]["name"] == "lenet5-v2"

    predictor = Predictor(model)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 64):  # the example batch was 2: any other size must work too
        images = rng.integers(0, 256, size=(batch, 1, 28, 28), dtype=np.uint8)
        logits = onnx_logits(path, images, meta["input_scale"], meta["input_shift"])
        with torch.no_grad():
            expected = predictor.model(predictor.normalize(torch.from_numpy(images))).numpy()
        assert logits.shape == (batch, 10)
        np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_export_errors(capsys, tmp_path):
    code, _, err = run(capsys, "export", str(tmp_path / "missing"), "--format", "onnx")
    assert code == 1 and "no such model file" in err
    with pytest.raises(SystemExit) as info:
        main(["export", str(tmp_path), "--format", "tflite"])
    assert info.value.code == 2


@pytest.mark.slow
def test_cli_export_matches_pytorch_on_1000_real_test_images(capsys, mnist_model, tmp_path):
    from lenet.data.datasets import load_dataset

    out = tmp_path / "mnist.onnx"
    code, stdout, err = run(capsys, "export", str(mnist_model), "--format", "onnx", "--out", str(out))
    assert code == 0, err
    assert f"wrote {out}" in stdout
    match = re.search(r"on 1,000 mnist test images: same prediction on 1,000/1,000, max \|logit diff\| (\S+)", stdout)
    assert match, stdout
    assert float(match.group(1)) < 1e-4

    # Independently of the CLI: all 1,000 in one batch, and one at a time for a few.
    data_dir = Predictor(mnist_model).config.data.data_dir
    images = load_dataset("mnist", data_dir).test.images[:1000].numpy()
    check = check_onnx(out, mnist_model, images, "mnist test")
    print(f"\n{check}")
    assert check.images == 1000 and check.agree == 1000 and check.max_abs_logit_diff < 1e-4
    meta = read_metadata(out)
    single = np.concatenate([onnx_logits(out, images[i:i + 1], meta["input_scale"], meta["input_shift"])
                             for i in range(5)])
    np.testing.assert_allclose(single, onnx_logits(out, images[:5], meta["input_scale"], meta["input_shift"]),
                               atol=1e-5)
    assert meta["test_accuracy"] == Predictor(mnist_model).test_accuracy
