"""One validated config for a run: data, model, optimiser, training, speed (build.py builds it).

The resolved config is written to every run directory and into every model file.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..data.augment import AugmentConfig
from ..data.sources import MAX_SIDE
from ..model.network import ModelConfig, check_architecture
from ..speed.config import SpeedConfig, move_speed_fields
from .base import Strict, explain

class DataConfig(Strict):
    dataset: Literal["fashion-mnist", "mnist", "cifar10"] = "fashion-mnist"
    path: str | None = Field(None, description=(
        "your own data instead of dataset: an image folder, a .csv or .npz file, or a folder of CSV, IDX or "
        "CIFAR-10 files (docs/data.md)"))
    image_size: int | None = Field(None, ge=4, le=MAX_SIDE, description="resize every picture to N x N on load "
                                                                          "(default: as they are)")
    channels: Literal[1, 3] | None = Field(None, description="1 grey or 3 RGB (default: as the pictures are)")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description=(
        "data that comes as one set (a folder of class folders, one CSV): the share of each class held out "
        "as the test set, the same pictures for every run"))
    skip_bad: bool = Field(False, description="leave out pictures that cannot be read instead of stopping")
    classes: list[str] | None = Field(None, description="the data's class names, recorded from it when a run starts")
    mean: float | None = Field(None, description="the training pixels' mean on a [0, 1] scale, measured when a run "
                                                 "starts where the catalogue has none (normalize=standard)")
    std: float | None = Field(None, gt=0.0, description="their standard deviation, measured with mean")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="random changes to training images")
    data_dir: str | None = Field(None, description="folder holding <dataset>/ subfolders")
    val_split: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of train held out; 0 = none")
    val_select: Literal["stratified", "last"] = Field(
        "stratified", description="which rows val_split holds out: stratified: a seeded share of each class; "
                                  "last: the file's last rows, unshuffled (Keras' validation_split)")
    normalize: Literal["unit", "standard", "raw", "signed"] = Field(
        "unit", description="unit: pixels/255 in [0,1] (the chapter); standard: (x-mean)/std; "
                            "raw: the pixels 0..255 as floats (the Keras chapter's code); "
                            "signed: pixels/127.5 - 1 in [-1, 1] (PyTorch's CIFAR-10 tutorial)"
    )

    @field_validator("val_split")
    @classmethod
    def _open_interval(cls, value: float) -> float:
        if value != 0.0 and not 0.0 < value < 1.0:
            raise ValueError("must be 0 (no validation split) or in (0, 1)")
        return value


class OptimConfig(Strict):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.9, gt=0.0, le=100.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "step", "cosine", "onecycle"] = "constant"
    step_epochs: int = Field(5, ge=1, description="step schedule: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step schedule: lr factor per decay")
    warmup_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="onecycle: share of steps rising")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    probability_clip: float = Field(0.0, ge=0.0, lt=0.5, description=(
        "training loss of the softmax probabilities clipped to [c, 1 - c], no gradient outside, as Keras' "
        "sparse_categorical_crossentropy computes it after a softmax layer (1e-7); 0: of the logits, as torch"))
    eps: float = Field(1e-8, gt=0.0, le=1.0, description="Adam's epsilon (torch: 1e-8, Keras: 1e-7)")
    eps_hat: bool = Field(False, description="Adam: eps added to sqrt(v) before the bias correction, the "
                                             "'epsilon hat' of Kingma & Ba, as Keras does; false: after it, as torch")
    ema: float = Field(0.0, ge=0.0, lt=1.0, description="decay of an exponential moving average of the weights "
                                                       "(0: none); with it, the averaged weights are the run's model")


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    eval_batch_size: int | None = Field(None, ge=1, description="images per evaluation batch (default: 2048 "
                                        "on a GPU, 1000 on a CPU, where batches of 2048 outgrow the caches)")
    dry_run: bool = Field(False, description="one batch of training and evaluation, for smoke tests")
    deterministic: bool = False
    progress: Literal["auto", "always", "never"] = "auto"
    tta: bool = Field(False, description="also report test accuracy with test-time augmentation (flips, shifts)")
    tensorboard: bool | None = Field(None, description=(
        "TensorBoard scalars in the run directory; None: where the tensorboard package is installed, silently "
        "skipped where not; true: asked for (a missing package is said, once); false: none"))
    evaluate_test: bool = Field(True, description="test loss and accuracy after every epoch; a search turns it "
                                                  "off, so choosing a config never sees the test set")


class RunConfig(Strict):
    name: str | None = Field(None, max_length=100, description="the run directory's name: letters, digits, . _ = , + -")
    preset: str | None = Field(None, description="the preset this config started from")
    seed: int = Field(0, ge=0, lt=2**32, description="numpy's generators take seeds below 2**32")
    device: str = "auto"
    out: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig, description="how the run computes (speed/config.py)")

    @model_validator(mode="before")
    @classmethod
    def _speed_switches_of_0_2(cls, data: Any) -> Any:
        return move_speed_fields(data) if isinstance(data, dict) else data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        # It names a folder under --out: no separators, no "..", nothing a shell or a
        # filesystem reads specially (newlines, control characters).
        if value is not None and not SAFE_NAME.match(value):
            raise ValueError("use letters, digits and . _ = , + - only, starting with a letter or digit "
                             "(it names the run's folder inside --out)")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        base, _, index = value.partition(":")
        if base not in ("auto", "cpu", "cuda", "mps") or (index and not (base == "cuda" and index.isdigit())):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _no_mirrored_digits(self) -> "RunConfig":
        if self.data.dataset == "mnist" and self.data.path is None and self.data.augment.flip \
                and not self.data.augment.force_flip:
            raise ValueError("data.augment.flip on MNIST: digits are not mirror-symmetric (a mirrored 2 is no 2); "
                             "leave flip off, or set data.augment.force_flip=true to flip anyway")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# A run or sweep name becomes a folder name: safe in a shell and on every filesystem.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")


def validate(tree: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        config = RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise explain(exc, source, RunConfig) from None
    check_architecture(config.model)
    return config
