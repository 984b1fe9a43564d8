"""Predicting on pictures: any common image file -> the form the model trained on -> top-k.

    load_image()     bytes or a file -> PIL image (size limits checked before decoding)
    to_grayscale()   any mode (RGBA, palette, 16-bit, CMYK...) -> float (H, W) in [0, 1]
    frame()          polarity, crop to the content, resize and centre as the dataset was made
                     -> uint8 (28, 28), light object on a dark background
    fit()            own data and CIFAR-10 (framing "resize"): the model's channels, resized
                     to its input size, nothing else
    Predictor        a trained model + the training Normalizer: pictures -> Prediction

The 28x28 image goes through exactly the training Normalizer (lenet.data.datasets.Normalizer
on uint8), so a dataset image saved as PNG is predicted as `lenet eval` predicts it.
"""

from __future__ import annotations

import io
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.folder import as_trained
from ..data.sources import convert_channels, resize
from ..errors import DataError
from ..store.models import load_model, recorded_preprocess

SIZE = 28  # both datasets: 28x28 pixels

# A picture larger than this is refused before its pixels are decoded: a small file
# can hold a huge image (a "decompression bomb"). 8192x8192 covers every phone camera;
# the server uses a tighter limit (lenet.use.serve).
MAX_PIXELS = 8192 * 8192
MAX_FILE_BYTES = 100 * 1024 * 1024

# Big pictures are box-filtered down to this longest side before any pixel work: the
# result is 28 pixels wide, so 1024 keeps a digit that fills 3% of the width at 30+ px.
WORK_SIDE = 1024

# Minimum difference between the object and the background, on a [0, 1] scale
# (about 20 grey levels of 255): anything fainter is a blank picture.
MIN_CONTRAST = 0.08
# A pixel is part of the object when it differs from the background by this fraction
# of the object's contrast; the crop is the box around those pixels.
CONTENT_THRESHOLD = 0.1
# ... and by this many noise standard deviations (measured on the border): a noisy
# photo keeps its background noise out of the crop.
NOISE_SIGMAS = 4.0


@dataclass(frozen=True)
class Framing:
    """How a dataset placed its objects in the 28x28 field."""

    box: int  # longest side of the object after resizing, pixels
    centre: str  # "mass": centre of mass at (MASS_CENTRE, MASS_CENTRE); "box": bounding box centred


# MNIST (LeCun et al., yann.lecun.com/exdb/mnist): "size normalized to fit in a 20x20
# pixel box while preserving their aspect ratio ... centered in a 28x28 image by computing
# the center of mass of the pixels". Measured on the test set: longest side of the box
# around non-zero pixels is 20 for every percentile from 5 to 95; the centre of mass is
# at row 13.99 +- 0.29, column 14.01 +- 0.29 (0-based pixel centres). A spread of
# 0.29 = 1/sqrt(12) is the error of rounding to whole pixels: MNIST shifted by whole pixels.
# Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747, "conversion pipeline"): products
# trimmed, "resizing the longest edge to 28", centred, negated: no margin. Measured: the
# longest side of the box is 28 in over 95% of the test images.
FRAMINGS: dict[str, Framing] = {
    "mnist": Framing(box=20, centre="mass"),
    "fashion-mnist": Framing(box=28, centre="box"),
}
MASS_CENTRE = 14.0

# The last step scales the object so its brightest pixel is white: 99% of the images
# of either dataset have a maximum of at least 254/255 (measured on the test sets).


class ImageError(DataError):
    """A picture that cannot be read, is too large, or holds nothing to classify."""


class ImageTooLarge(ImageError):
    """A file or picture over the size limits (the server answers 413)."""


class BlankImage(ImageError):
    """A readable picture with no object in it (one colour, or too faint)."""


# --------------------------------------------------------------------------- reading


def load_image(source: str | Path | bytes | BinaryIO, name: str | None = None,
               max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> Image.Image:
    """A decoded PIL image, upright (EXIF orientation applied), first frame of animations.

    Size limits are checked from the header, before any pixel is decoded. Errors are
    ImageError subclasses whose message names the file.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or str(path)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except OSError as exc:
            raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
        if path.is_dir():
            raise ImageError(f"{name}: a directory, not a picture")
        if not stat.S_ISREG(info.st_mode):
            # A device (/dev/zero) reports size 0 and never ends; a FIFO blocks the open.
            raise ImageError(f"{name}: not a regular file (a device, pipe or socket), not a picture")
        if info.st_size > max_bytes:
            raise ImageTooLarge(f"{name}: {info.st_size / 2**20:.1f} MB is over the limit of "
                                f"{max_bytes / 2**20:.0f} MB")
        try:
            with open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)  # bounded even if the file grows meanwhile
        except OSError as exc:
            raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = source.read(max_bytes + 1)
    name = name or "picture"
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes), not a picture")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{name}: over the limit of {max_bytes / 2**20:.0f} MB")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a picture in a format we can read "
                         "(PNG, JPEG, GIF, BMP, WebP, TIFF, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard (over ~89 M pixels) fires inside open(); where warnings are
        # errors (the tests) its warning arrives as this exception too.
        raise ImageTooLarge(f"{name}: far too many pixels to be a picture worth classifying") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: corrupt or unreadable picture ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} pixels")
    if width == 0 or height == 0:
        raise BlankImage(f"{name}: empty picture ({width}x{height} pixels)")
    try:
        if image.format == "JPEG":
            # DCT scaling: decode a big JPEG at 1/2, 1/4 or 1/8 size directly (fast, less memory)
            image.draft(image.mode, (WORK_SIDE, WORK_SIDE))
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: corrupt or truncated picture ({exc})") from None
    return image


def to_grayscale(image: Image.Image) -> np.ndarray:
    """float32 (H, W) in [0, 1] from any PIL mode.

    16-bit and 32-bit modes are scaled by their range (Pillow's convert("L") clips
    them); transparency is flattened onto the background that contrasts with the
    drawing, so black strokes on a transparent canvas and white ones both survive.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        return (np.asarray(image, dtype=np.float32) / 65535.0).clip(0, 1)
    if mode == "I":
        values = np.asarray(image, dtype=np.float32)
        return (values / (65535.0 if values.max() > 255 else 255.0)).clip(0, 1)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        return (values / 255.0 if values.max() > 1.0 else values).clip(0, 1)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    if not has_alpha:
        if mode not in ("L", "RGB", "1"):
            image = image.convert("RGB")  # CMYK, YCbCr, P, LAB, HSV, ...
        # ITU-R 601-2 luma for RGB: what Pillow's convert("L") does
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    luma = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32) / 255.0
    if alpha.min() >= 1.0:
        return luma
    drawn = alpha > 0.5
    # The object is what is opaque; show it on the background it contrasts with.
    ink = float(luma[drawn].mean()) if drawn.any() else 0.0
    background = 1.0 if ink < 0.5 else 0.0
    return luma * alpha + background * (1.0 - alpha)


# --------------------------------------------------------------------------- framing


@dataclass
class Framed:
    """The image the model sees, and how it was made."""

    image: np.ndarray  # uint8 (S, S) grey (light object on dark for MNIST framings), or (S, S, 3) RGB
    inverted: bool  # the picture was dark on light and was negated
    crop: tuple[int, int, int, int]  # (top, left, bottom, right) of the object, in working pixels

    def chw(self) -> np.ndarray:
        """uint8 (C, S, S): the layout the model takes."""
        return self.image[None] if self.image.ndim == 2 else self.image.transpose(2, 0, 1)


@dataclass(frozen=True)
class Preprocess:
    """How a model's pictures are made (recorded in its file as "preprocess")."""

    framing: str  # a key of FRAMINGS, or "resize"
    channels: int = 1
    size: int = SIZE
    normalize: str = "unit"
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Preprocess":
        try:
            out = cls(framing=str(record["framing"]), channels=int(record["channels"]), size=int(record["size"]),
                      normalize=str(record.get("normalize", "unit")), mean=float(record.get("mean", 0.0)),
                      std=float(record.get("std", 1.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"the model's recorded preprocessing is invalid ({exc}): {str(record)[:120]}") from None
        if out.channels not in (1, 3) or out.size < 1 or (out.framing != "resize" and out.framing not in FRAMINGS):
            raise ImageError(f"the model's recorded preprocessing is not one lenet knows: {str(record)[:120]}")
        return out


def _as_preprocess(dataset: "str | Preprocess") -> Preprocess:
    if isinstance(dataset, Preprocess):
        return dataset
    if dataset not in FRAMINGS:
        raise ImageError(f"no framing known for dataset {dataset!r}; known: {', '.join(FRAMINGS)}")
    return Preprocess(framing=dataset)


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def _drop_isolated(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with at least 2 of their 8 neighbours also set: noise specks go."""
    padded = np.pad(mask, 1).astype(np.uint8)
    h, w = mask.shape
    neighbours = sum(padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
    return mask & (neighbours >= 2)


def _resize(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """float (H, W) -> (height, width), antialiased (Lanczos; ringing clipped)."""
    if values.shape == (height, width):
        return values
    image = Image.fromarray(values.astype(np.float32))  # mode "F": 32-bit float pixels
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32).clip(0, 1)


def frame(gray: np.ndarray, dataset: str, invert: bool | None = None, name: str = "picture") -> Framed:
    """float (H, W) in [0, 1] -> the dataset's 28x28 form.

    ``invert``: None decides from the picture (an object darker than its background
    is negated: the datasets are light on dark), True/False force it.
    """
    if dataset not in FRAMINGS:
        raise ImageError(f"no framing known for dataset {dataset!r}; known: {', '.join(FRAMINGS)}")
    framing = FRAMINGS[dataset]
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise BlankImage(f"{name}: empty picture ({'x'.join(map(str, gray.shape))} pixels)")
    border = _border(gray) if min(gray.shape) > 2 else gray.ravel()
    background = float(np.median(border))
    # Noise level of the background: the median absolute deviation of the border,
    # scaled to a standard deviation (1.4826 for Gaussian noise). 0 for clean images.
    noise = 1.4826 * float(np.median(np.abs(border - background)))
    floor = NOISE_SIGMAS * noise
    deviation = gray - background
    if invert is None:
        # Which way do the pixels that stand out from the background go?
        outliers = deviation[np.abs(deviation) > max(floor, MIN_CONTRAST)]
        invert = bool(outliers.sum() < 0)
    signal = (-deviation if invert else deviation).clip(min=0)

    strong = _drop_isolated(signal > max(floor, MIN_CONTRAST))
    if not strong.any():
        raise BlankImage(
            f"{name}: blank picture, nothing to classify (no pixels differ from the background "
            f"by more than {MIN_CONTRAST:.0%} of the full range)")
    contrast = float(np.percentile(signal[strong], 99))  # the object's; robust to hot pixels
    mask = _drop_isolated(signal > max(floor, CONTENT_THRESHOLD * contrast))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top_edge, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    # background -> 0, object -> 1
    obj = ((signal[top_edge:bottom, left:right] - floor) / max(contrast - floor, 1e-6)).clip(0, 1)

    # Resize: the longest side to the dataset's box, the aspect ratio kept.
    h, w = obj.shape
    scale = framing.box / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    obj = _resize(obj, new_w, new_h)

    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    if framing.centre == "mass" and obj.sum() > 0:
        ys, xs = np.mgrid[0:new_h, 0:new_w]
        total = obj.sum()
        cy, cx = float((obj * ys).sum() / total), float((obj * xs).sum() / total)
        top_row, left_col = round(MASS_CENTRE - cy), round(MASS_CENTRE - cx)
    else:
        top_row, left_col = (SIZE - new_h) // 2, (SIZE - new_w) // 2
    # Whole-pixel shifts (as MNIST did), kept inside the field.
    top_row = min(max(top_row, 0), SIZE - new_h)
    left_col = min(max(left_col, 0), SIZE - new_w)
    canvas[top_row:top_row + new_h, left_col:left_col + new_w] = obj
    peak = canvas.max()
    if peak <= 0:
        raise BlankImage(f"{name}: blank picture, nothing to classify")
    image = np.rint(canvas / peak * 255).astype(np.uint8)
    return Framed(image=image, inverted=invert, crop=(top_edge, left, bottom, right))


def fit(image: Image.Image, channels: int, size: int) -> Framed:
    """Any picture -> uint8 (size, size) or (size, size, 3): converted and resized as training
    resized the data (lenet.data.sources: luma weights, antialiased bilinear); no cropping."""
    # as training read the picture (alpha dropped, not composited): a training picture gives what training saw
    pixels = np.array(as_trained(image, channels), dtype=np.uint8)  # a writable copy: torch warns on read-only
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # as_trained gave ``channels`` already
    out = resize(chw[None], size)[0]
    width, height = image.size
    return Framed(image=np.ascontiguousarray(out[0] if channels == 1 else out.transpose(1, 2, 0)),
                  inverted=False, crop=(0, 0, height, width))


def _to_model(framed: Framed, pre: Preprocess) -> Framed:
    """A framed 28x28 grey picture at the model's size and channels (MNIST framings on a resized run)."""
    chw = resize(convert_channels(framed.chw()[None], pre.channels), pre.size)[0]
    image = chw[0] if pre.channels == 1 else chw.transpose(1, 2, 0)
    return Framed(np.ascontiguousarray(image), framed.inverted, framed.crop)


def prepare(source: str | Path | bytes | BinaryIO | Image.Image, dataset: str | Preprocess,
            invert: bool | None = None, name: str | None = None, max_pixels: int = MAX_PIXELS,
            max_bytes: int = MAX_FILE_BYTES) -> Framed:
    """A picture (file, bytes or PIL image) -> the model's input form: ``dataset`` names an
    MNIST framing (28x28 grey), or is a model's Preprocess."""
    pre = _as_preprocess(dataset)
    if isinstance(source, Image.Image):
        image = source
    else:
        image = load_image(source, name=name, max_pixels=max_pixels, max_bytes=max_bytes)
    name = name or (str(source) if isinstance(source, (str, Path)) else "picture")
    if max(image.size) > WORK_SIDE:
        if isinstance(source, Image.Image):
            image = image.copy()  # thumbnail() works in place: leave the caller's picture alone
        image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)  # area average: no aliasing
    if pre.framing == "resize":
        return fit(image, pre.channels, pre.size)
    framed = frame(to_grayscale(image), pre.framing, invert, name)
    return framed if (pre.channels, pre.size) == (1, SIZE) else _to_model(framed, pre)


def save_input(framed: Framed | np.ndarray, path: str | Path) -> Path:
    """The image the model saw, as an 8-bit PNG (grey or RGB)."""
    pixels = framed.image if isinstance(framed, Framed) else framed
    path = Path(path)
    try:
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(path)  # 2-D: "L"; (S, S, 3): "RGB"
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot write {path}: {exc}") from None
    return path


# --------------------------------------------------------------------------- the model


@dataclass
class Prediction:
    label: str
    index: int
    confidence: float
    probabilities: list[float]  # one per class, in class order
    class_names: list[str]
    input: np.ndarray = field(repr=False)  # uint8 (S, S) or (S, S, 3): what the model saw
    inverted: bool = False
    source: str | None = None

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(self.class_names[i], self.probabilities[i]) for i in order]

    def to_dict(self, top_k: int | None = 3) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "index": self.index, "confidence": self.confidence,
                               "probabilities": dict(zip(self.class_names, self.probabilities, strict=True)),
                               "inverted": self.inverted}
        if top_k:
            out["top"] = [{"label": n, "probability": p} for n, p in self.top(top_k)]
        if self.source is not None:
            out = {"file": self.source, **out}
        return out


class Predictor:
    """A trained model that classifies pictures, preprocessed exactly as in training.

    >>> p = Predictor("runs/keras-v2-mnist")
    >>> p.predict("digit.jpg").top(3)
    [('7', 0.98), ('9', 0.01), ('2', 0.004)]
    """

    def __init__(self, model_path: str | Path, device: str = "cpu"):
        trained = load_model(model_path, device)
        self.model_path, self.device = trained.path, trained.device
        self.model, self.config, self.meta = trained.model, trained.config, trained.meta
        self.dataset = self.config.data.dataset
        self.class_names: list[str] = trained.class_names
        self.normalize = trained.normalize
        self.preprocess = Preprocess.from_dict(recorded_preprocess(self.config, trained.meta))
        self.framing = FRAMINGS.get(self.preprocess.framing)  # None for "resize"
        self.mean, self.std = self.preprocess.mean, self.preprocess.std  # pixel statistics (GET /model)
        self.channels, self.size = self.preprocess.channels, self.preprocess.size

    @property
    def test_accuracy(self) -> float | None:
        return self.meta.get("test_accuracy")

    def prepare(self, source: Any, invert: bool | None = None, name: str | None = None,
                max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> Framed:
        return prepare(source, self.preprocess, invert, name, max_pixels, max_bytes)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (N, S, S), (N, C, S, S) or (N, S, S, C) -> softmax probabilities (N, classes)."""
        x = torch.as_tensor(np.asarray(images, dtype=np.uint8))
        if x.ndim == 3:
            x = x.unsqueeze(1)  # (N, 1, S, S)
        elif x.ndim == 4 and x.shape[1] != self.channels and x.shape[3] == self.channels:
            x = x.permute(0, 3, 1, 2)  # channels last (Framed.image) -> (N, C, S, S)
        logits = self.model(self.normalize(x.to(self.device)))
        return torch.softmax(logits.float(), 1).cpu().numpy()

    def _prediction(self, framed: Framed, probs: np.ndarray, name: str | None) -> Prediction:
        index = int(probs.argmax())
        return Prediction(label=self.class_names[index], index=index, confidence=float(probs[index]),
                          probabilities=[float(p) for p in probs], class_names=self.class_names,
                          input=framed.image, inverted=framed.inverted, source=name)

    def predict(self, source: Any, invert: bool | None = None, name: str | None = None,
                max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> Prediction:
        if name is None and isinstance(source, (str, Path)):
            name = str(source)
        framed = self.prepare(source, invert, name, max_pixels, max_bytes)
        return self._prediction(framed, self.probabilities(framed.chw()[None])[0], name)

    def predict_many(self, sources: Sequence[Any], invert: bool | None = None,
                     batch_size: int = 512) -> list[Prediction | ImageError]:
        """One Prediction per picture, or the ImageError that picture raised.

        The pictures are framed one by one and classified in batches: one forward pass
        per batch instead of one per picture.
        """
        out: list[Prediction | ImageError] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start:start + batch_size]
            framed: list[Framed | ImageError] = []
            for source in chunk:
                try:
                    framed.append(self.prepare(source, invert))
                except ImageError as exc:
                    # Kept without its traceback: the frames hold the decoded picture.
                    framed.append(exc.with_traceback(None))
            ok = [f for f in framed if isinstance(f, Framed)]
            probs = iter(self.probabilities(np.stack([f.chw() for f in ok])) if ok else [])
            for source, f in zip(chunk, framed, strict=True):
                name = str(source) if isinstance(source, (str, Path)) else None
                out.append(self._prediction(f, next(probs), name) if isinstance(f, Framed) else f)
        return out
