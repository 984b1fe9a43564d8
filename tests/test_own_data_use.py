"""Using a model trained on your own data: 3-channel 16x16 pictures of 4 named classes (and
a grey 20x20 one of 3): predict, serve, export (ONNX, int8, C), eval and the figures all
take the run's own channels, size and class names."""

from __future__ import annotations

import base64
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.exceptions import StarletteDeprecationWarning

import lenet
from lenet.cli import main
from lenet.data.datasets import load_data
from lenet.store.models import read_safetensors_header
from lenet.use.export import LOGIT_TOLERANCE, export, onnx_logits, read_metadata
from lenet.use.inspection import write_activations, write_filters
from lenet.use.predict import Predictor
from lenet.use.serve import create_app

with warnings.catch_warnings():
    # As in test_serve.py: starlette's notice about the httpx it still uses, at import only.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated",
                            category=StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

NAMES = ["red top", "green band", "blue middle", "red low"]


def stripes(rng: np.random.Generator, n: int, channels: int, side: int, classes: int):
    """Noise with a bright band whose row and colour say the class: learnt in 2 epochs."""
    labels = rng.integers(0, classes, n)
    images = (rng.random((n, side, side, channels)) * 60).astype(np.uint8)
    for c in range(classes):
        images[labels == c, c * 4:c * 4 + 4, :, c % channels] += 150
    return (images if channels == 3 else images[..., 0]), labels


def train_on(folder: Path, channels: int, side: int, classes: int, names: list[str] | None = None) -> Path:
    rng = np.random.default_rng(0)
    x_train, y_train = stripes(rng, 400, channels, side, classes)
    x_test, y_test = stripes(rng, 100, channels, side, classes)
    folder.mkdir(parents=True)
    np.savez(folder / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    if names:
        (folder / "classes.txt").write_text("\n".join(names) + "\n")
    cfg = lenet.config(epochs=2, set={"model.activation": "relu", "optim.lr": 0.1, "data.normalize": "standard"})
    run = lenet.train(cfg, out=str(folder / "runs"), data=str(folder / "d.npz"))
    return Path(run.run_dir).resolve()


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> Path:
    return train_on(tmp_path_factory.mktemp("own-rgb") / "data", 3, 16, 4, NAMES)


def test_images(run: Path) -> tuple[np.ndarray, np.ndarray]:
    data = load_data(lenet.load(run).config)
    return data.test.images.numpy(), data.test.labels.numpy()


test_images.__test__ = False  # a helper, not a test


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_model_file_records_its_preprocessing(rgb_run):
    meta = read_safetensors_header(rgb_run / "model.safetensors")["__metadata__"]
    pre = json.loads(meta["preprocess"])
    assert (pre["framing"], pre["channels"], pre["size"], pre["normalize"]) == ("resize", 3, 16, "standard")
    assert json.loads(meta["class_names"]) == NAMES


def test_predict_an_rgb_png_as_the_model_sees_the_array(rgb_run):
    images, _ = test_images(rgb_run)  # (N, 3, 16, 16)
    predictor = Predictor(rgb_run)
    assert predictor.class_names == NAMES
    direct = predictor.probabilities(images[:20])
    for i in range(20):
        result = predictor.predict(png(images[i].transpose(1, 2, 0)), name=f"test-{i}.png")
        assert result.label in NAMES and result.input.shape == (16, 16, 3)
        np.testing.assert_array_equal(result.input.transpose(2, 0, 1), images[i])  # same size: pixels untouched
        np.testing.assert_allclose(result.probabilities, direct[i], atol=1e-6)


def test_a_grey_or_transparent_picture_on_an_rgb_model(rgb_run):
    images, _ = test_images(rgb_run)
    predictor = Predictor(rgb_run)
    grey = predictor.predict(png(images[0].transpose(1, 2, 0), "L"))
    assert grey.label in NAMES and grey.input.shape == (16, 16, 3)
    assert (grey.input[..., 0] == grey.input[..., 2]).all()  # grey repeated into RGB
    big = Image.fromarray(images[0].transpose(1, 2, 0)).convert("RGBA").resize((64, 64), Image.Resampling.NEAREST)
    assert predictor.predict(big).input.shape == (16, 16, 3)  # resized down, alpha dropped


def test_onnx_export_matches_onnxruntime_on_the_own_test_images(rgb_run, tmp_path):
    path, check = export(rgb_run, "onnx", out=tmp_path / "m.onnx", check=100)
    assert check.images == 100 and check.agree == 100 and "d.npz" in check.source
    meta = read_metadata(path)
    assert meta["class_names"] == NAMES and meta["input_shape"] == ["batch", 3, 16, 16]
    assert meta["preprocess"]["framing"] == "resize"
    images, _ = test_images(rgb_run)
    ort = onnx_logits(path, images, meta["input_scale"], meta["input_shift"])
    torch_logits = lenet.load(rgb_run).model.eval()(
        (torch.from_numpy(images).float() * meta["input_scale"] - meta["input_shift"])).detach().numpy()
    assert (ort.argmax(1) == torch_logits.argmax(1)).all()
    np.testing.assert_allclose(ort, torch_logits, atol=LOGIT_TOLERANCE)


@pytest.mark.parametrize("fmt, int8", [("onnx", True), ("c", False)])
def test_int8_and_c_export_work_on_three_channels(rgb_run, tmp_path, fmt, int8):
    path, check = export(rgb_run, fmt, out=tmp_path / ("m.onnx" if fmt == "onnx" else "c"), check=50, int8=int8)
    assert path.exists()
    if isinstance(check, str):  # no C compiler here: said so, not crashed
        assert "compiler" in check.lower()
    else:
        assert check.images == 50 and check.agree >= 45 and "d.npz" in check.source


def test_serve_gives_the_model_classes_and_predicts_rgb(rgb_run):
    images, _ = test_images(rgb_run)
    with TestClient(create_app(rgb_run)) as client:
        info = client.get("/model").json()
        assert info["classes"] == NAMES and info["input"]["shape"] == [3, 16, 16]
        assert info["dataset"] == "d.npz" and info["input"]["framing"] == "resize"
        answer = client.post("/predict", files={"image": ("x.png", png(images[0].transpose(1, 2, 0)), "image/png")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["classes"] == NAMES and body["label"] in NAMES and set(body["probabilities"]) == set(NAMES)
        seen = Image.open(io.BytesIO(base64.b64decode(body["input_image"].split(",", 1)[1])))
        assert seen.mode == "RGB" and seen.size == (16, 16)


def test_eval_prints_the_data_class_names(rgb_run, capsys):
    assert main(["eval", str(rgb_run)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)


def test_figures_of_a_three_channel_run(rgb_run, tmp_path, capsys):
    images, _ = test_images(rgb_run)
    Image.fromarray(images[0].transpose(1, 2, 0)).save(tmp_path / "pic.png")
    written = write_activations(rgb_run, per_class=1, out=tmp_path / "acts")
    written += write_activations(rgb_run, images=[tmp_path / "pic.png"], out=tmp_path / "acts")
    assert len(written) == 5 and all(p.stat().st_size > 0 for p in written)
    assert any(NAMES[0].replace(" ", "-") in p.name for p in written)
    assert write_filters(rgb_run, out=tmp_path / "filters.png").stat().st_size > 0
    assert main(["augment", "--run", str(rgb_run), "--out", str(tmp_path / "aug.png"), "--images", "2"]) == 0
    assert (tmp_path / "aug.png").stat().st_size > 0


def test_a_grey_20x20_run_predicts_a_png(tmp_path):
    run = train_on(tmp_path / "grey", 1, 20, 3)
    predictor = Predictor(run)
    images, _ = test_images(run)  # (N, 1, 20, 20)
    assert predictor.class_names == ["0", "1", "2"] and images.shape[1:] == (1, 20, 20)
    result = predictor.predict(png(images[0, 0]))
    assert result.input.shape == (20, 20) and result.label in predictor.class_names
    np.testing.assert_allclose(result.probabilities, predictor.probabilities(images[:1])[0], atol=1e-6)
    rgb = predictor.predict(png(np.repeat(images[0, 0][..., None], 3, 2)))  # an RGB picture on a grey model
    assert rgb.input.shape == (20, 20)


def test_predict_makes_a_picture_as_training_read_it_alpha_and_16_bit_included(tmp_path):
    from lenet.data.folder import read_folder
    from lenet.data.sources import ReadOptions
    from lenet.use.predict import Preprocess, prepare

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255  # white under the transparent background, as icon editors save it
    rgba[2:6, 2:6] = [200, 30, 30, 255]
    rgba[1, 1] = [0, 200, 0, 128]
    pictures = {"rgba": Image.fromarray(rgba, "RGBA"), "la": Image.fromarray(rgba, "RGBA").convert("LA"),
                "palette": Image.fromarray(rgba, "RGBA").convert("P"),
                "sixteen": Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))}
    for name, picture in pictures.items():
        for k in range(2):
            (tmp_path / name / f"c{k}").mkdir(parents=True)
            picture.save(tmp_path / name / f"c{k}" / "x.png")
        for channels in (1, 3):
            trained = read_folder(tmp_path / name, ReadOptions(channels=channels, progress=False, cache=False))
            seen = prepare(tmp_path / name / "c0" / "x.png", Preprocess(framing="resize", channels=channels, size=8))
            np.testing.assert_array_equal(seen.chw(), trained.splits["all"][0][0], err_msg=f"{name}, {channels}")
