"""int8 quantisation (lenet.use.quantize, lenet.training.qat, `lenet quantize`): batch norm
folded exactly, the int8 model close to the float one for every layer kind, calibration
on training images only, QAT, and the command's report and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from int8_models import KINDS, random_images, trained, write_model
from lenet.cli import main
from lenet.model.network import list_models
from lenet.training.qat import finetune, quantize
from lenet.use.int8_file import INT8_FILE, load_int8
from lenet.use.quantize import calibrate, fold, ptq, quantization_ranges

# int8 rounds each of a few tensors to 1/255 of its range: the logits move by a few
# percent of their spread (the gap between a model's highest and lowest logit). A wrong
# scale or zero point moves them by the whole spread.
LOGIT_TOLERANCE = 0.15


def int8_vs_float(model, images: torch.Tensor, int8) -> tuple[float, float]:
    """(largest |int8 logit - float logit| / mean logit spread, share of images classified alike)."""
    with torch.no_grad():
        real = model.model(model.normalize(images)).double()
    approx = int8.scores(images).double() * int8.score_scale
    spread = (real.max(1).values - real.min(1).values).mean()
    return float((approx - real).abs().max() / spread), float((approx.argmax(1) == real.argmax(1)).double().mean())


@pytest.mark.parametrize("activation, pool, batch_norm", KINDS)
def test_every_activation_and_pooling_kind_quantizes_close_to_float(tmp_path, activation, pool, batch_norm):
    model = trained(tmp_path, activation=activation, pool=pool, batch_norm=batch_norm, init="kaiming",
                    conv_channels=[4, 6], dense=[16])
    images = random_images(300)
    folded = fold(model.model)
    with torch.no_grad():  # folding batch norm and fusing ReLU change nothing in float
        torch.testing.assert_close(folded(model.normalize(images)), model.model(model.normalize(images)),
                                   atol=1e-4, rtol=1e-4)
    int8, calibration = ptq(model, images[:200])
    error, agree = int8_vs_float(model, images, int8)
    assert error < LOGIT_TOLERANCE and agree >= 0.9
    assert set(calibration.ranges) == {s.name for s in folded.steps if s.point}


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_quantizes(tmp_path, name):
    model = trained(tmp_path, name=name)
    images = random_images(200, seed=1)
    int8, _ = ptq(model, images[:100])
    error, _ = int8_vs_float(model, images, int8)
    assert error < LOGIT_TOLERANCE
    float_bytes = 4 * sum(p.numel() for p in model.model.parameters())
    assert int8.parameter_bytes < float_bytes / 3  # int8 weights, a few int32 per channel


def test_other_channel_counts_sizes_and_class_counts(tmp_path):
    model = trained(tmp_path, in_channels=3, input_size=32, num_classes=5, conv_channels=[4, 8, 8],
                    kernel_size=3, padding="same", activation="relu", pool="max", pool_size=3, pool_stride=2,
                    pool_padding=1, batch_norm=True, dense=[12])
    images = random_images(200, (3, 32, 32))
    int8, _ = ptq(model, images[:100])
    assert int8.input_shape == (3, 32, 32) and int8.scores(images).shape == (200, 5)
    assert int8.shapes()[-1] == (5,)
    error, _ = int8_vs_float(model, images, int8)
    assert error < LOGIT_TOLERANCE


def test_the_normalizer_is_folded_into_the_input(tmp_path):
    for normalize in ("unit", "standard"):
        model = trained(tmp_path / normalize, normalize=normalize, activation="relu", pool="max")
        int8, _ = ptq(model, random_images(50))
        pixel_zero = int8.input_zero + 128  # the pixel value that is a real 0
        assert int8.input_scale == pytest.approx(model.normalize.scale, rel=1e-6)
        assert pixel_zero == round(model.normalize.shift / model.normalize.scale)


def test_calibration_reads_training_images_never_the_test_set(tmp_path):
    from conftest import write_tiny_dataset

    run = write_model(tmp_path / "run", activation="relu", pool="max")
    for name, seed in (("a", 1), ("b", 2)):  # the same training images, different test images
        write_tiny_dataset(tmp_path / name / "fashion-mnist", seed=0)
        other = write_tiny_dataset(tmp_path / "other" / name, seed=seed)
        for file in other.glob("t10k-*"):
            file.replace(tmp_path / name / "fashion-mnist" / file.name)
    a = quantize(run, data_dir=tmp_path / "a", out=tmp_path / "a.safetensors", calibration=100)
    b = quantize(run, data_dir=tmp_path / "b", out=tmp_path / "b.safetensors", calibration=100)
    assert a.calibration.ranges == b.calibration.ranges
    for la, lb in zip(load_int8(a.path).layers, load_int8(b.path).layers):
        assert all(torch.equal(getattr(la, k), getattr(lb, k)) for k in ("weight", "multiplier", "table")
                   if hasattr(la, k))


def test_qat_trains_through_the_simulated_rounding(tmp_path, tiny_data_dir):
    from lenet.data.datasets import load_dataset

    model = trained(tmp_path, activation="relu", pool="max", batch_norm=True)
    data = load_dataset("fashion-mnist", tiny_data_dir)
    folded = fold(model.model)
    ranges = quantization_ranges(calibrate(folded, model.normalize(data.train.images[:200])))
    before = {k: v.detach().clone() for k, v in folded.params.items()}
    losses = finetune(folded, ranges, data.train.images, data.train.labels, model.normalize, epochs=2, lr=1e-3)
    assert len(losses) == 2 and losses[1] < losses[0]
    assert any(not torch.equal(before[k], v) for k, v in folded.params.items())
    # What QAT simulates is what the int8 model computes: its logits are the reference's, to rounding.
    int8, _ = ptq(model, data.train.images[:200], ranges=ranges, folded=folded)
    images = data.test.images
    with torch.no_grad():
        simulated = folded(model.normalize(images), ranges).double()
    reference = int8.scores(images).double() * int8.score_scale
    spread = (simulated.max(1).values - simulated.min(1).values).mean()
    assert float((simulated - reference).abs().max() / spread) < 0.05
    assert float((simulated.argmax(1) == reference.argmax(1)).double().mean()) >= 0.98


def test_cli_quantize_reports_float_and_int8_and_writes_the_file(capsys, tiny_data_dir):
    assert main(["train", "--preset", "d2l", "--data-dir", str(tiny_data_dir), "--epochs", "2", "--batch-size", "32",
                 "--device", "cpu", "--name", "r"]) == 0
    capsys.readouterr()
    assert main(["quantize", "runs/r", "--data-dir", str(tiny_data_dir), "--calibration-images", "300"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and "int8 (PTQ)" in out and f"wrote {Path('runs/r') / INT8_FILE}" in out
    int8 = load_int8("runs/r")
    assert int8.info["calibration"]["images"] == 300 and int8.info["calibration"]["source"] == "training set"

    assert main(["quantize", "runs/r", "--data-dir", str(tiny_data_dir), "--qat", "--epochs", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    from lenet.data.datasets import load_dataset

    test = load_dataset("fashion-mnist", tiny_data_dir).test
    kept = load_int8("runs/r")
    assert report["qat_epochs"] == 1 and kept.info["qat"]["epochs"] == 1
    assert report["int8_accuracy"] == report["qat_accuracy"] == float((kept.predict(test.images) == test.labels)
                                                                      .float().mean())
    assert report["int8_bytes"] == kept.parameter_bytes < report["float_bytes"]


def test_cli_quantize_errors_are_one_line(capsys, tmp_path, tiny_data_dir):
    def run(*argv: str) -> tuple[int, str]:
        code = main(["quantize", *argv])
        return code, capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    code, err = run(str(tmp_path / "empty"))
    assert code == 1 and "no such model file" in err and err.count("\n") == 1
    write_model(tmp_path / "run")
    for argv, words in (([str(tmp_path / "run"), "--epochs", "2"], "add --qat"),
                        ([str(tmp_path / "run"), "--qat", "--epochs", "0"], "at least one epoch"),
                        ([str(tmp_path / "run"), "--qat", "--lr", "nan"], "positive number"),
                        ([str(tmp_path / "run"), "--calibration-images", "0"], "at least one image")):
        code, err = run(*argv, "--data-dir", str(tiny_data_dir))
        assert code == 2 and words in err and err.count("\n") == 1, (argv, err)


def test_quantize_takes_a_run_in_memory_and_writes_nothing(tmp_path, tiny_data_dir):
    import lenet

    run = lenet.train(lenet.config("keras-v2", epochs=1, batch_size=64, data_dir=str(tiny_data_dir), device="cpu"))
    result = quantize(run, calibration=100)
    assert result.path is None and not list(tmp_path.rglob(INT8_FILE))
    assert result.test_images == 200 and result.calibration.images == 100
    assert result.float_accuracy == pytest.approx(run.test_accuracy, abs=1e-6)
