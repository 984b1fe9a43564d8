"""Pictures -> the dataset's 28x28 form -> classes: framing, file formats, errors, accuracy."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lenet.cli import main
from lenet.use.predict import (BlankImage, ImageError, ImageTooLarge, Predictor, frame, load_image, prepare,
                           to_grayscale)
from lenet.errors import EXIT_DATA
import models_fixture
from pictures import png_bytes, png_header_only, seven

# Session fixtures, trained once for all test modules (see models_fixture.py).
mnist_model = models_fixture.mnist_model
untrained_model = models_fixture.untrained_model


def box_of(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of the box around non-zero pixels."""
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    total = image.astype(float).sum()
    return float((image * ys).sum() / total), float((image * xs).sum() / total)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


# --------------------------------------------------------------------------- framing


def test_light_on_dark_is_kept_and_dark_on_light_is_inverted():
    light = prepare(seven(), "mnist")
    dark = prepare(seven(ink=20, paper=230), "mnist")
    assert not light.inverted and dark.inverted
    assert light.image.dtype == np.uint8 and light.image.shape == (28, 28)
    assert light.image.max() == 255 and light.image[0].max() == 0  # white object, black margin
    assert similarity(light.image, dark.image) > 0.98


def test_inversion_can_be_forced():
    assert prepare(seven(ink=20, paper=230), "mnist", invert=True).inverted
    # Read as light on dark, black ink on white paper holds nothing lighter than the paper.
    with pytest.raises(BlankImage):
        prepare(seven(ink=20, paper=230), "mnist", invert=False)


def test_mnist_framing_20px_box_centred_by_mass_wherever_the_object_was():
    small_corner = prepare(seven(size=60, width=6, offset=(130, 5), canvas=(200, 150)), "mnist").image
    big_centre = prepare(seven(size=400, width=40), "mnist").image
    for image in (small_corner, big_centre):
        assert max(box_of(image)) in (20, 21)  # Lanczos may leave a faint pixel beside the box
        cy, cx = centre_of_mass(image)
        assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert similarity(small_corner, big_centre) > 0.9


def test_fashion_framing_fills_28_and_centres_the_box():
    wide = Image.new("L", (300, 200), 0)
    ImageDraw.Draw(wide).rectangle([40, 60, 159, 119], fill=200)  # 120 x 60 object
    image = prepare(wide, "fashion-mnist").image
    assert box_of(image) == (14, 28)  # longest side 28, aspect 2:1 kept
    rows = np.flatnonzero(image.any(1))
    assert (rows[0], rows[-1]) == (7, 20)  # centred: 7 empty rows above and below


def test_aspect_ratio_is_kept_for_a_tall_thin_object():
    tall = Image.new("L", (100, 200), 0)
    ImageDraw.Draw(tall).rectangle([40, 20, 59, 179], fill=255)  # 20 x 160
    height, width = box_of(prepare(tall, "mnist").image)
    assert height == 20 and width in (2, 3, 4)  # 20 * 20/160 = 2.5


def test_noisy_photo_background_stays_out_of_the_crop():
    rng = np.random.default_rng(0)
    photo = np.asarray(seven(size=100, ink=40, paper=200, offset=(150, 60), canvas=(320, 240)), dtype=float)
    photo = (photo + rng.normal(0, 10, photo.shape)).clip(0, 255).astype(np.uint8)
    framed = prepare(Image.fromarray(photo), "mnist")
    assert framed.inverted
    assert similarity(framed.image, prepare(seven(), "mnist").image) > 0.9


# --------------------------------------------------------------------------- file formats


@pytest.mark.parametrize("variant", ["rgb-jpeg", "rgba-black-on-transparent", "rgba-white-on-transparent",
                                     "palette-gif", "16-bit-png", "la-png", "1-bit-bmp", "cmyk-jpeg", "webp"])
def test_common_formats_and_modes_give_the_same_input(variant):
    reference = prepare(seven(), "mnist").image
    gray = seven()
    if variant == "rgb-jpeg":
        data = png_bytes(Image.merge("RGB", [gray] * 3), "JPEG", quality=90)
    elif variant.startswith("rgba"):
        colour = (0, 0, 0) if "black" in variant else (255, 255, 255)
        rgba = Image.new("RGBA", gray.size, colour + (0,))
        rgba.putalpha(gray)  # the strokes are opaque, the rest transparent
        data = png_bytes(rgba)
    elif variant == "palette-gif":
        data = png_bytes(gray.convert("P"), "GIF")
    elif variant == "16-bit-png":
        data = png_bytes(Image.fromarray(np.asarray(gray).astype(np.uint16) * 257))
        assert Image.open(io.BytesIO(data)).mode.startswith("I")
    elif variant == "la-png":
        data = png_bytes(Image.merge("LA", [gray, Image.new("L", gray.size, 255)]))
    elif variant == "1-bit-bmp":
        data = png_bytes(gray.point(lambda v: 255 if v > 127 else 0).convert("1"), "BMP")
    elif variant == "cmyk-jpeg":
        data = png_bytes(Image.merge("RGB", [gray] * 3).convert("CMYK"), "JPEG", quality=90)
    else:
        data = png_bytes(gray, "WEBP", lossless=True)
    framed = prepare(data, "mnist")
    assert similarity(framed.image, reference) > 0.95, variant


def test_exif_orientation_is_applied():
    upright = seven()
    # Orientation 6: the camera was turned; viewers rotate the stored pixels 90 degrees clockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    framed = prepare(png_bytes(stored.convert("RGB"), "JPEG", quality=95, exif=exif), "mnist")
    assert similarity(framed.image, prepare(upright, "mnist").image) > 0.95


def test_to_grayscale_scales_16_bit_instead_of_clipping():
    values = to_grayscale(Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)))
    assert values.max() == pytest.approx(0.5, abs=1e-3)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("data, error, needle", [
    (b"", ImageError, "empty file (0 bytes)"),
    (b"hello, not a picture", ImageError, "not a picture"),
    (png_header_only(20_000, 20_000), ImageTooLarge, "pixels"),  # 400 M pixels claimed in 57 bytes
    (png_header_only(9_000, 9_000), ImageTooLarge, "over the limit"),  # 81 M: over lenet's 67 M
], ids=["zero-bytes", "text", "bomb", "huge"])
def test_unreadable_or_huge_pictures_are_clear_errors(data, error, needle):
    with pytest.raises(error, match="^upload.png: .*" + re.escape(needle)):
        load_image(data, name="upload.png")


def test_truncated_picture_is_a_clear_error():
    data = png_bytes(seven())
    with pytest.raises(ImageError, match="corrupt or truncated"):
        prepare(data[:len(data) // 2], "mnist")


@pytest.mark.parametrize("image", [Image.new("L", (50, 50), 255), Image.new("RGB", (64, 32), (90, 120, 200)),
                                   Image.new("L", (40, 40), 128).point(lambda v: v + 10)],
                         ids=["white", "blue", "grey"])
def test_a_picture_of_one_colour_is_blank(image):
    with pytest.raises(BlankImage, match="blank picture, nothing to classify"):
        prepare(image, "mnist")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="a directory"):
        load_image(tmp_path)


def test_frame_refuses_unknown_dataset():
    with pytest.raises(ImageError, match="no framing known"):
        frame(np.zeros((5, 5), np.float32), "cifar10")


# --------------------------------------------------------------------------- the model and the CLI


def test_predictor_probabilities_and_top_k(untrained_model):
    predictor = Predictor(untrained_model)
    prediction = predictor.predict(png_bytes(seven()), name="seven.png")
    assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
    top = prediction.top(3)
    assert top[0] == (prediction.label, prediction.confidence)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    record = prediction.to_dict(top_k=2)
    assert record["file"] == "seven.png" and len(record["top"]) == 2 and len(record["probabilities"]) == 10


@pytest.mark.parametrize("normalize, scale", [("raw", 1.0), ("unit", 1 / 255)])
def test_a_prediction_feeds_the_network_the_pixels_its_training_did(tmp_path, normalize, scale):
    """keras-v1/v2 train on the raw 0..255 pixels: predicting must not rescale them."""
    import torch

    from lenet.configuration.build import build_config
    from lenet.data.datasets import get_spec
    from lenet.model.network import LeNet
    from lenet.store.models import MODEL_FILE, save_model

    cfg = build_config("keras-v2", overrides=["data.dataset=mnist", f"data.normalize={normalize}"])
    torch.manual_seed(0)
    save_model(tmp_path / MODEL_FILE, LeNet(cfg.model).eval(), cfg, get_spec("mnist").class_names)
    predictor = Predictor(tmp_path)
    prediction = predictor.predict(png_bytes(seven()), name="seven.png")
    pixels = torch.from_numpy(predictor.prepare(png_bytes(seven())).image).float().view(1, 1, 28, 28)
    with torch.no_grad():
        expected = predictor.model(pixels * scale).softmax(-1)[0]
    assert prediction.probabilities == pytest.approx(expected.tolist(), abs=1e-5)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_predict_text_json_and_show_input(capsys, untrained_model, tmp_path):
    seven().save(tmp_path / "light.png")
    seven(ink=0, paper=255).convert("RGB").save(tmp_path / "dark.jpg", quality=90)
    code, out, err = run(capsys, "predict", str(untrained_model), str(tmp_path / "light.png"), "--top-k", "2")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == str(tmp_path / "light.png") and len(lines) == 3 and lines[1].strip().endswith("%")

    code, out, _ = run(capsys, "predict", str(untrained_model), str(tmp_path / "light.png"),
                       str(tmp_path / "dark.jpg"), "--json", "--show-input", str(tmp_path / "in.png"))
    records = json.loads(out)
    assert code == 0 and [r["inverted"] for r in records] == [False, True]
    assert set(records[0]) >= {"file", "label", "index", "confidence", "probabilities", "top", "input_file"}
    saved = [Image.open(r["input_file"]) for r in records]
    assert [(im.size, im.mode) for im in saved] == [((28, 28), "L")] * 2
    assert [Path(r["input_file"]).name for r in records] == ["in-1.png", "in-2.png"]
    assert similarity(np.asarray(saved[0]), np.asarray(saved[1])) > 0.95


def test_cli_predict_errors_exit_with_a_clear_message(capsys, untrained_model, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    code, _, err = run(capsys, "predict", str(untrained_model), str(tmp_path / "notes.png"))
    assert code == EXIT_DATA and err.strip() == f"lenet predict: error: {tmp_path / 'notes.png'}: not a picture in a " \
                                        "format we can read (PNG, JPEG, GIF, BMP, WebP, TIFF, ...)"
    seven().save(tmp_path / "ok.png")
    Image.new("L", (30, 30), 0).save(tmp_path / "black.png")
    code, out, err = run(capsys, "predict", str(untrained_model), str(tmp_path / "ok.png"),
                         str(tmp_path / "black.png"))
    assert code == EXIT_DATA and str(tmp_path / "ok.png") in out
    assert "black.png: blank picture" in err and "1 of 2 pictures could not be classified" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "predict", str(tmp_path / "no-model"), str(tmp_path / "ok.png"))
    assert code == 1 and "no such model file" in err


# --------------------------------------------------------------------------- on real data


def photo_of(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A 28x28 MNIST digit as a phone photo of paper: dark ink on a light, noisy background,
    3-6x larger, anywhere in a bigger frame, JPEG-compressed."""
    scale = rng.uniform(3, 6)
    side = int(28 * scale)
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    height, width = int(side * rng.uniform(1.3, 2.0)), int(side * rng.uniform(1.3, 2.2))
    canvas = np.zeros((height, width), np.float32)
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    canvas[top:top + side, left:left + side] = ink
    paper, pen = rng.uniform(0.7, 0.95), rng.uniform(0.05, 0.3)
    photo = paper + (pen - paper) * canvas + rng.normal(0, 0.04, canvas.shape)
    image = Image.fromarray((photo.clip(0, 1) * 255).astype(np.uint8)).convert("RGB")
    return png_bytes(image, "JPEG", quality=85)


@pytest.mark.slow
def test_predict_on_1000_test_pngs_matches_test_accuracy(mnist_model, tmp_path):
    from lenet.data.datasets import load_dataset

    predictor = Predictor(mnist_model)
    test = load_dataset("mnist", predictor.config.data.data_dir).test
    images, labels = test.images[:1000, 0].numpy(), test.labels[:1000].numpy()
    direct = predictor.probabilities(images).argmax(1)  # the training pipeline, no pictures involved
    direct_accuracy = float((direct == labels).mean())
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i:04d}-label{labels[i]}.png")
        Image.fromarray(image).save(paths[-1])
    predictions = predictor.predict_many(paths)
    assert all(not isinstance(p, ImageError) for p in predictions)
    png_accuracy = float(np.mean([p.index == y for p, y in zip(predictions, labels, strict=True)]))
    print(f"\nMNIST test images 0-999: accuracy {direct_accuracy:.4f} from the tensors, {png_accuracy:.4f} "
          f"from PNG files through `predict`; model's test accuracy (10,000): {predictor.test_accuracy:.4f}")
    assert abs(png_accuracy - direct_accuracy) <= 0.005
    assert abs(png_accuracy - predictor.test_accuracy) <= 0.015  # 1,000 of 10,000: sampling spread

    rng = np.random.default_rng(0)
    photos = [photo_of(image, rng) for image in images[:200]]
    results = predictor.predict_many(photos)
    photo_accuracy = float(np.mean([r.index == y for r, y in zip(results, labels[:200], strict=True)]))
    print(f"the first 200 as dark-on-light photos (larger, off-centre, noisy, JPEG): accuracy {photo_accuracy:.4f}")
    assert all(r.inverted for r in results)
    assert photo_accuracy >= direct_accuracy - 0.03
