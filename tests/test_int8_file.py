"""model-int8.safetensors (lenet.use.int8_file): a faithful round trip, and every kind of
damaged or foreign file refused with one line before anything uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from int8_models import random_images, trained
from lenet.errors import RunError
from lenet.store.models import MODEL_FILE
from lenet.use.int8_file import FORMAT, INT8_FILE, load_int8, save_int8
from lenet.use.quantize import ptq


@pytest.fixture
def int8_file(tmp_path: Path) -> Path:
    model = trained(tmp_path / "run", activation="tanh", pool="avg", batch_norm=True)
    int8, _ = ptq(model, random_images(100))
    return save_int8(tmp_path / "run" / INT8_FILE, int8)


def rewrite(path: Path, tensors=None, **metadata) -> Path:
    """The file again, with tensors and metadata fields (JSON values) replaced."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata())
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    out = path.with_name("tampered.safetensors")
    save_file(tensors if tensors is not None else load_file(path), str(out), metadata=meta)
    return out


def layers_of(path: Path) -> list[dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return json.loads(handle.metadata()["layers"])


def test_round_trip_keeps_every_integer_and_the_scores(int8_file):
    loaded = load_int8(int8_file.parent)  # a run directory finds its model-int8.safetensors
    again = load_int8(save_int8(int8_file.with_name("copy.safetensors"), loaded))
    images = random_images(64, seed=3)
    assert torch.equal(loaded.scores(images), again.scores(images))
    assert [type(a) for a in loaded.layers] == [type(b) for b in again.layers]
    assert loaded.info["class_names"] == [f"class {i}" for i in range(10)]


def test_a_run_without_an_int8_model_says_how_to_make_one(tmp_path):
    with pytest.raises(RunError, match="lenet quantize"):
        load_int8(tmp_path)


def test_foreign_and_damaged_files_are_refused(int8_file, tmp_path):
    with pytest.raises(RunError, match="not a lenet int8 model"):
        load_int8(int8_file.parent / MODEL_FILE)  # the float model: a lenet file, not this kind
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(RunError, match="not a safetensors model file"):
        load_int8(junk)
    with pytest.raises(RunError, match="not a lenet int8 model"):
        load_int8(rewrite(int8_file, format="lenet-int8/99"))
    assert FORMAT == "lenet-int8/1"


def _tampered_layers(int8_file: Path, index: int, **changes) -> Path:
    layers = layers_of(int8_file)
    layers[index].update(changes)
    return rewrite(int8_file, layers=layers)


@pytest.mark.parametrize("index, changes, words", [
    (0, {"name": "conv1; system(x)"}, "not an identifier"),  # names become C identifiers
    (0, {"input_zero": 300}, "input_zero must be an integer in -128..127"),
    (0, {"padding": -1}, "padding must be an integer"),
    (1, {"kind": "softmax"}, "unknown layer kind"),
    (2, {"size": 2, "padding": 2}, "pool padding"),
    (0, {"output_scale": float("nan")}, "positive finite"),
    (1, {"activation": "*/ int evil; /*"}, "unknown activation"),  # it would reach a C comment
])
def test_hostile_fields_are_refused(int8_file, index, changes, words):
    with pytest.raises(RunError, match="not a valid lenet int8 model") as info:
        load_int8(_tampered_layers(int8_file, index, **changes))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_hostile_tensors_are_refused(int8_file):
    tensors = load_file(int8_file)
    cases = {
        "shift": ({**tensors, "conv1.shift": torch.full_like(tensors["conv1.shift"], 63)}, "outside 1..62"),
        "weight": ({**tensors, "conv1.weight": torch.full_like(tensors["conv1.weight"], -128)}, "outside -127..127"),
        "dtype": ({**tensors, "conv1.bias": tensors["conv1.bias"].float()}, "expected I32"),
        "missing": ({k: v for k, v in tensors.items() if k != "act1.table"}, "do not match the layers"),
        "extra": ({**tensors, "payload": torch.zeros(3)}, "do not match the layers"),
        "shape": ({**tensors, "conv2.weight": tensors["conv2.weight"][:, :3].contiguous()}, "does not fit"),
        "table": ({**tensors, "act1.table": tensors["act1.table"][:255].contiguous()}, "expected (256,)"),
    }
    for name, (changed, words) in cases.items():
        with pytest.raises(RunError, match="not a valid lenet int8 model") as info:
            load_int8(rewrite(int8_file, changed))
        assert words in str(info.value), name


def test_class_names_must_match_the_scores(int8_file):
    info = json.loads(json.dumps(load_int8(int8_file).info))
    info["class_names"] = ["only", "three", "names"]
    with pytest.raises(RunError, match="class_names must be 10 strings"):
        load_int8(rewrite(int8_file, info=info))
