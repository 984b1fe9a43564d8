"""A run's config fitted to its data: the model's input and classes from the data's
shape, and what the data is recorded in the config, so that everything after training
(evaluation, prediction, export) knows it from the config alone (data.datasets.data_spec)."""

from __future__ import annotations

from typing import Any

from ..data.catalog import DATASETS, get_spec
from ..data.datasets import Dataset
from ..data.sources import MAX_SIDE, check_as_trained
from ..errors import ConfigError, DataError
from ..model.network import ModelConfig, check_architecture
from .run import RunConfig, validate


def fit_to_data(cfg: RunConfig, dataset: Dataset) -> RunConfig:
    """``cfg`` with the model's input shape and class count taken from the data, unless the
    config set them (then they must agree), and what the data is recorded (class names of
    data not in the catalogue, pixel statistics that had to be measured)."""
    _, channels, height, _ = dataset.train.images.shape
    spec = dataset.spec
    check_as_trained(spec.class_names, dataset.train.images, cfg)  # a resumed run's data, given as a Dataset
    wanted = {"in_channels": (int(channels), "channels"), "input_size": (int(height), "pixels a side"),
              "num_classes": (len(spec.class_names), "classes")}
    given = cfg.model.model_fields_set
    where = cfg.data.path or cfg.data.dataset
    model = {}
    for key, (value, what) in wanted.items():
        have = getattr(cfg.model, key)
        if have != value and key in given:
            hint = " or pass --image-size " + str(have) if key == "input_size" else ""
            raise DataError(f"the config says model.{key}={have} but the data ({where}) has {value} {what}; "
                            f"leave model.{key} out to follow the data{hint}")
        model[key] = value
    data: dict[str, Any] = {}
    if spec.name not in DATASETS or cfg.data.path:
        data["classes"] = list(spec.class_names)
    catalogued = spec.name in DATASETS and not cfg.data.path and get_spec(spec.name).std
    if not catalogued and cfg.data.std is None:
        data.update(mean=spec.mean, std=spec.std)
    if not data and all(getattr(cfg.model, k) == v for k, v in model.items()):
        return cfg
    tree = cfg.to_dict()
    tree["model"].update(model)
    tree["data"].update(data)
    try:
        return validate(tree, f"the config fitted to the data at {where}")
    except ConfigError as exc:
        if "input_size" in given or not str(exc).startswith("impossible architecture"):
            raise
        # else "use a smaller kernel, more padding, or fewer conv blocks", which says nothing of the pictures
        need = smallest_side(cfg.model)
        raise DataError(f"the data at {where} has pictures of {height} x {height}, too small for model "
                        f"{cfg.model.name} (its layers need {need} x {need} or more); pass --image-size N to "
                        f"enlarge them, e.g. --image-size {max(need, 28)}") from None


def smallest_side(model: ModelConfig) -> int:
    """The least input side ``model``'s layers take."""
    for side in range(1, MAX_SIDE + 1):
        try:
            check_architecture(model.model_copy(update={"input_size": side}))
            return side
        except ConfigError:
            continue
    return MAX_SIDE
