"""Seeing inside a trained network (feature maps per input, the learned kernels) and
what it is shown (training images and their augmented versions).

    feature_maps(model, images, normalize) -> [Activations]: forward hooks on every
        conv block's activation (act1, act2, ...) and pooling layer (pool1, ...)
    plot_activations(...)  one PNG per input: the image, the class probabilities and
        each layer's maps as a mosaic on one colour scale per layer
    plot_filters(...)      every conv layer's kernels, (out, in) grid, a symmetric scale
    augment_figure(...)    training images, each followed by augmented versions of it

Works for any architecture a ModelConfig describes (any number of blocks, pooling
or none, batch norm): layers are found by their names in ``model.features``.
Figures are built with matplotlib.figure.Figure, never pyplot (see figures.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..data.augment import augmented_examples
from ..data.datasets import class_index, data_spec, load_data
from ..errors import UsageError
from ..store.models import load_model, recorded_preprocess
from .figures import DPI, image_grid_figure
from .predict import Preprocess, prepare

# A mosaic row holds at most this many maps: 16 maps of LeNet-5's conv2 become 2 rows
# of 8, which keeps 5x5 maps large enough to see on a laptop screen.
MAX_COLUMNS = 8
GAP = 0.12  # blank between maps in a mosaic, as a fraction of a map's side


@dataclass
class LayerMaps:
    name: str  # layer name in model.features: act1, pool1, ...
    description: str  # "block 1, after sigmoid (before pooling)"
    maps: np.ndarray  # (C, H, W) float32


@dataclass
class Activations:
    image: np.ndarray  # (H, W) grey or (H, W, 3) RGB uint8, as the model saw it before normalising
    probabilities: np.ndarray  # (classes,)
    layers: list[LayerMaps]
    label: int | None = None  # the true class, where known
    source: str = ""  # "test #42", a file name

    @property
    def prediction(self) -> int:
        return int(self.probabilities.argmax())


def probed_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, description) of each conv block's activation and pooling layer."""
    features = getattr(model, "features", None)
    if features is None:
        raise UsageError("this model has no `features` block of named conv layers to look into")
    out = []
    for name, module in features.named_children():
        match = re.fullmatch(r"(act|pool)(\d+)", name)
        if not match:
            continue
        kind, block = match.groups()
        if kind == "act":
            pooled = f"pool{block}" in dict(features.named_children())
            after = "(before pooling)" if pooled else "(no pooling)"
            out.append((name, module, f"block {block}, after {type(module).__name__.lower()} {after}"))
        else:
            out.append((name, module, f"block {block}, after {type(module).__name__.replace('2d', '')}"))
    return out


@torch.no_grad()
def feature_maps(model: nn.Module, images: torch.Tensor, normalize, labels: Sequence[int | None] | None = None,
                 sources: Sequence[str] | None = None) -> list[Activations]:
    """Forward ``images`` (N, C, H, W) uint8 once, keeping every probed layer's output."""
    captured: dict[str, torch.Tensor] = {}
    layers = probed_layers(model)
    hooks = [module.register_forward_hook(lambda _m, _i, out, n=name: captured.__setitem__(n, out.detach()))
             for name, module, _ in layers]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        logits = model(normalize(images.to(device)))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    probabilities = torch.softmax(logits.float(), 1).cpu().numpy()
    results = []
    for i in range(len(images)):
        results.append(Activations(
            image=_picture(images[i]),
            probabilities=probabilities[i],
            layers=[LayerMaps(name, text, captured[name][i].float().cpu().numpy()) for name, _, text in layers],
            label=None if labels is None else labels[i],
            source="" if sources is None else sources[i],
        ))
    return results


def _picture(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> what imshow draws: (H, W) grey or (H, W, 3) RGB."""
    pixels = image.cpu().numpy()
    return pixels[0] if pixels.shape[0] == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0))


def mosaic_rgb(kernels: np.ndarray, columns: int) -> np.ndarray:
    """(N, 3, k, k) -> one RGB mosaic (rows*k + gaps, columns*k + gaps, 3), each kernel
    scaled to 0..1 on its own (RGB has no colour scale to share); white gaps."""
    low = kernels.min(axis=(1, 2, 3), keepdims=True)
    span = kernels.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = (kernels - low) / np.where(span > 0, span, 1.0)
    planes = [mosaic(scaled[:, c], columns) for c in range(3)]
    return np.nan_to_num(np.stack(planes, -1), nan=1.0)


def mosaic(maps: np.ndarray, columns: int) -> np.ndarray:
    """(C, H, W) -> one (rows*H + gaps, columns*W + gaps) image; NaN in the gaps (drawn blank)."""
    count, height, width = maps.shape
    rows = math.ceil(count / columns)
    gap = max(1, round(GAP * height))
    out = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap), np.nan, np.float32)
    for index in range(count):
        r, c = divmod(index, columns)
        top, left = r * (height + gap), c * (width + gap)
        out[top:top + height, left:left + width] = maps[index]
    return out


def _layer_grid(count: int) -> int:
    return min(count, MAX_COLUMNS)


def plot_activations(act: Activations, class_names: Sequence[str], path: Path, title: str | None = None) -> Path:
    """activations_figure, saved as a PNG."""
    return _save(activations_figure(act, class_names, title), path)


def activations_figure(act: Activations, class_names: Sequence[str], title: str | None = None) -> Figure:
    """One figure: the input and its class probabilities, then a row per probed layer.

    Each layer's maps share one colour scale (its own min..max over all its maps), shown
    by the colour bar at the row's right end (the row sits against it), so within a layer
    brighter means a stronger response; scales differ between layers.
    """
    sections = []  # (layer, mosaic image, columns)
    for layer in act.layers:
        columns = _layer_grid(len(layer.maps))
        sections.append((layer, mosaic(layer.maps, columns), columns))
    width = 9.0  # inches
    # Height of each layer row follows its mosaic's aspect, so square maps stay square.
    heights = [2.2] + [max(0.9, 0.62 * width * m.shape[0] / max(m.shape[1], 1) * min(1.0, c / MAX_COLUMNS)) + 0.35
                       for _, m, c in sections]
    fig = Figure(figsize=(width, sum(heights) + (0.4 if title else 0)), layout="constrained")
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=[1, 2.4])

    image_ax = fig.add_subplot(grid[0, 0])
    if act.image.ndim == 3:  # RGB
        image_ax.imshow(act.image, interpolation="nearest")
    else:
        image_ax.imshow(act.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    image_ax.set_xticks([])
    image_ax.set_yticks([])
    predicted = act.prediction
    verdict = f"pred: {class_names[predicted]} (p={act.probabilities[predicted]:.2f})"
    if act.label is not None:
        verdict += f"\ntrue: {class_names[act.label]}" + ("" if act.label == predicted else "  (wrong)")
    image_ax.set_title(verdict, fontsize=9)
    if act.source:
        colour = " RGB" if act.image.ndim == 3 else ""
        image_ax.set_xlabel(f"input {act.image.shape[0]}x{act.image.shape[1]}{colour}, {act.source}", fontsize=8)

    prob_ax = fig.add_subplot(grid[0, 1])
    colours = ["C1" if i == predicted else ("C2" if i == act.label else "C0") for i in range(len(class_names))]
    positions = np.arange(len(class_names))
    prob_ax.barh(positions, act.probabilities, color=colours)
    prob_ax.set_yticks(positions, labels=list(class_names), fontsize=7)
    prob_ax.invert_yaxis()
    prob_ax.set_xlim(0, 1)
    prob_ax.set_xlabel("probability", fontsize=8)
    prob_ax.tick_params(axis="x", labelsize=7)
    prob_ax.grid(True, axis="x", alpha=0.3)

    for row, (layer, image, columns) in enumerate(sections, start=1):
        ax = fig.add_subplot(grid[row, :])
        finite = layer.maps[np.isfinite(layer.maps)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmax <= vmin:  # a constant layer (dead ReLUs): any scale shows it flat
            vmax = vmin + 1e-6
        shown = ax.imshow(np.ma.masked_invalid(image), cmap="viridis", vmin=vmin, vmax=vmax,
                          interpolation="nearest")
        count, height, width_px = layer.maps.shape
        gap = max(1, round(GAP * height))
        for index in range(count):
            r, c = divmod(index, columns)
            ax.text(c * (width_px + gap) + 0.3, r * (height + gap) + 0.3, str(index), color="white",
                    fontsize=6, ha="left", va="top",
                    bbox={"facecolor": "black", "alpha": 0.45, "edgecolor": "none", "pad": 0.5})
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(f"{layer.name}: {count} maps of {height}x{width_px} — {layer.description}",
                     fontsize=9, loc="left")
        colorbar = fig.colorbar(shown, ax=ax, shrink=0.9, pad=0.01, aspect=15)
        colorbar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    return fig


def conv_kernels(model: nn.Module) -> list[tuple[str, np.ndarray]]:
    """(name, weights (out, in, k, k)) of every conv layer, in order."""
    return [(name.split(".")[-1], module.weight.detach().float().cpu().numpy())
            for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def plot_filters(model: nn.Module, path: Path, title: str | None = None) -> Path:
    """filters_figure, saved as a PNG."""
    return _save(filters_figure(model, title), path)


def filters_figure(model: nn.Module, title: str | None = None) -> Figure:
    """Every conv layer's kernels: a column per output channel, a row per input channel
    (conv1's single input channel: the kernels in a row). One symmetric colour scale
    per layer, red positive and blue negative, so the sign of each weight shows. A layer
    whose kernels read an RGB picture (3 input channels, the first) shows each as an RGB
    picture, scaled to 0..1 on its own: which colours and edges it looks for."""
    layers = conv_kernels(model)
    if not layers:
        raise UsageError("this model has no conv layers")
    panels = []
    for name, weights in layers:
        out_ch, in_ch, k, _ = weights.shape
        if in_ch == 3 and not panels:
            panels.append((name, mosaic_rgb(weights, _layer_grid(out_ch)),
                           f"{out_ch} RGB kernels of {k}x{k} (each scaled to 0..1 on its own)", None))
            continue
        if in_ch == 1:
            columns = _layer_grid(out_ch)
            image = mosaic(weights[:, 0], columns)
            layout = f"{out_ch} kernels of {k}x{k}"
        else:
            # (out, in, k, k) -> in rows of out kernels: wide rather than tall on a page
            image = mosaic(weights.transpose(1, 0, 2, 3).reshape(in_ch * out_ch, k, k), out_ch)
            layout = f"{out_ch} x {in_ch} kernels of {k}x{k} (column: output channel, row: input channel)"
        panels.append((name, image, layout, float(np.abs(weights).max()) or 1e-6))
    width = 7.0
    heights = [max(0.8, width * 0.8 * img.shape[0] / img.shape[1]) + 0.4 for _, img, _, _ in panels]
    heights = [min(h, 12.0) for h in heights]
    fig = Figure(figsize=(width + 1.2, sum(heights) + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (name, image, layout, limit) in zip(axes, panels, strict=True):
        if limit is None:  # RGB kernels: the colours are the weights, no colour bar
            ax.imshow(image, interpolation="nearest")
        else:
            shown = ax.imshow(np.ma.masked_invalid(image), cmap="RdBu_r", vmin=-limit, vmax=limit,
                              interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(f"{name}: {layout}", fontsize=9, loc="left")
        if limit is not None:
            fig.colorbar(shown, ax=ax, shrink=0.9, pad=0.01, aspect=15).ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


# --------------------------------------------------------------------------- inputs


def pick_test_examples(labels: np.ndarray, classes: Sequence[int], per_class: int) -> list[int]:
    """The first ``per_class`` test indices of each class, in the order given (deterministic)."""
    if per_class < 1:
        raise UsageError(f"--per-class must be at least 1, got {per_class}")
    picked = []
    for cls in classes:
        members = np.flatnonzero(labels == cls)[:per_class]
        picked.extend(int(i) for i in members)
    return picked


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def chosen_inputs(trained, classes: Sequence[str] | None = None, per_class: int = 1,
                  indices: Sequence[int] | None = None, images: Sequence[str | Path] | None = None,
                  data_dir: str | None = None) -> tuple[torch.Tensor, list[int | None], list[str], list[str]]:
    """(uint8 batch (N, C, S, S), true labels, sources, file names) of the inputs asked for:
    ``images`` (files), else ``indices`` of the test set, else the first ``per_class``
    test images of each of ``classes`` (names, aliases or indices; default all classes)."""
    cfg = trained.config
    if images:
        # The same preprocessing `lenet predict` uses (MNIST framings: crop, resize, polarity).
        pre = Preprocess.from_dict(recorded_preprocess(cfg, trained.meta))
        pictures = np.stack([prepare(p, pre).chw() for p in images])  # (N, C, S, S)
        return (torch.from_numpy(pictures), [None] * len(images), [Path(p).name for p in images],
                [f"image-{_slug(Path(p).stem)}" for p in images])
    spec = data_spec(cfg)
    data = load_data(cfg, data_dir)
    test_labels = data.test.labels.numpy()
    if indices:
        bad = [i for i in indices if not 0 <= i < len(test_labels)]
        if bad:
            raise UsageError(f"--index {bad[0]} is out of range: the test set has {len(test_labels)} images")
        chosen = list(indices)
    else:
        wanted = [class_index(spec, c) for c in classes] if classes else list(range(len(trained.class_names)))
        chosen = pick_test_examples(test_labels, wanted, per_class)
    labels = [int(test_labels[i]) for i in chosen]
    names = [f"test-{i:05d}-{_slug(trained.class_names[label])}" for i, label in zip(chosen, labels, strict=True)]
    return data.test.images[chosen], labels, [f"test #{i}" for i in chosen], names


def activations(target, classes: Sequence[str] | None = None, per_class: int = 1,
                indices: Sequence[int] | None = None, images: Sequence[str | Path] | None = None,
                data_dir: str | None = None) -> list[Figure]:
    """The feature maps of a run (in memory or on disk) or model file for some inputs
    (see chosen_inputs), one figure per input: what ``lenet activations`` draws."""
    trained = load_model(target)
    batch, labels, sources, _ = chosen_inputs(trained, classes, per_class, indices, images, data_dir)
    cfg = trained.config
    title = f"{trained.name} ({cfg.model.name}, {cfg.model.activation}, {cfg.model.pool} pool)"
    return [activations_figure(act, trained.class_names, title)
            for act in feature_maps(trained.model, batch, trained.normalize, labels, sources)]


def filters(target) -> Figure:
    """The learned conv kernels of a run or model file, as ``lenet filters`` draws them."""
    trained = load_model(target)
    return filters_figure(trained.model, f"{trained.name}: learned conv kernels")


def write_activations(run: str | Path, classes: Sequence[str] | None = None, per_class: int = 1,
                      indices: Sequence[int] | None = None, images: Sequence[str | Path] | None = None,
                      data_dir: str | None = None, out: str | Path | None = None) -> list[Path]:
    """One activations PNG per input of a trained run or model file; returns the paths."""
    trained = load_model(run)
    model_path, cfg = trained.path, trained.config
    out = Path(out) if out else model_path.parent / "activations"
    batch, labels, sources, names = chosen_inputs(trained, classes, per_class, indices, images, data_dir)
    results = feature_maps(trained.model, batch, trained.normalize, labels, sources)
    title_model = f"{model_path.parent.name} ({cfg.model.name}, {cfg.model.activation}, {cfg.model.pool} pool)"
    return [plot_activations(act, trained.class_names, out / f"{name}.png", title=title_model)
            for act, name in zip(results, names, strict=True)]


def write_filters(run: str | Path, out: str | Path | None = None) -> Path:
    trained = load_model(run)
    path = Path(out) if out else trained.path.parent / "filters.png"
    return plot_filters(trained.model, path, title=f"{trained.path.parent.name}: learned conv kernels")


def augment_figure(target, count: int = 8, versions: int = 5, seed: int = 0, data_dir: str | None = None):
    """A grid: ``count`` training images (one per row), each followed by ``versions``
    augmented versions, as the run's config would make them. ``target``: a RunConfig
    (lenet.config), a Run, or a run directory / model file (its stored config)."""
    cfg = getattr(target, "config", target)
    if not hasattr(cfg, "data"):
        cfg = load_model(target).config
    data = load_data(cfg, data_dir)
    picked = torch.linspace(0, len(data.train) - 1, count).long()
    chosen = data.train.images[picked]
    grid = augmented_examples(chosen, cfg.data.augment, seed, versions)  # (count, 1+v, [C,] H, W)
    names = data.spec.class_names
    titles = [f"{names[int(data.train.labels[i])]}" if v == 0 else f"augmented {v}"
              for i in picked for v in range(1 + versions)]
    on = [f"{k}={v}" for k, v in cfg.data.augment.model_dump().items() if v and k != "erase_size"]
    return image_grid_figure(grid.reshape(-1, *grid.shape[2:]).numpy(), titles, columns=1 + versions,
                             title=f"{data.spec.name}: each image, then {versions} augmented versions "
                                   f"({', '.join(on) or 'no augmentation'})")
