"""Model files (store/models.py): what model.safetensors holds, the one loader that
takes a TrainedModel, a Run, a run directory or a file, and one clear error for every
file that is not a lenet model (checked before anything is built, never unpickled)."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import Payload

from lenet.cli import main
from lenet.configuration.build import build_config
from lenet.data.datasets import get_spec, load_dataset
from lenet.errors import RunError
from lenet.model.network import LeNet
from lenet.store.models import IN_MEMORY, MODEL_FILE, TrainedModel, load_model, save_model
from lenet.training.run import train
from models_fixture import write_untrained


def tiny_config(data_dir: Path, name: str = "tiny"):
    return build_config("keras-v2", overrides=[f"data.data_dir={data_dir}", f"name={name}", "train.epochs=1",
                                               "train.batch_size=64", "device=cpu", "train.progress=never"])


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A run directory holding only an (untrained) keras-v2 Fashion-MNIST model file."""
    return write_untrained(tmp_path / "run", "fashion-mnist")


# --------------------------------------------------------------------------- what a model file holds


def test_a_model_file_holds_the_weights_and_what_using_them_needs(tmp_path):
    cfg = build_config("keras-v2", overrides=["device=cpu"])
    torch.manual_seed(1)
    model = LeNet(cfg.model).eval()
    names = tuple(f"class {i}" for i in range(10))
    (tmp_path / "run").mkdir()
    save_model(tmp_path / "run" / MODEL_FILE, model, cfg, names, extra={"test_accuracy": 0.5})

    for target in (tmp_path / "run", tmp_path / "run" / MODEL_FILE):
        trained = load_model(target)
        assert isinstance(trained, TrainedModel) and trained.path == tmp_path / "run" / MODEL_FILE
        assert trained.config == cfg and trained.class_names == list(names) and trained.test_accuracy == 0.5
        assert trained.name == "run" and trained.dataset == "fashion-mnist" and not trained.model.training
        for key, value in model.state_dict().items():
            assert torch.equal(trained.model.state_dict()[key], value), key
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(trained.normalize(images))
    assert torch.allclose(trained.logits(images, batch_size=2), expected, atol=1e-6)


def test_a_model_trained_channels_last_loads_in_that_layout_on_the_cpu(tmp_path):
    cfg = build_config("keras-v2", overrides=["device=cpu"])
    names = get_spec("fashion-mnist").class_names
    save_model(tmp_path / "plain.safetensors", LeNet(cfg.model), cfg, names)
    save_model(tmp_path / "cl.safetensors", LeNet(cfg.model), cfg, names, extra={"speed": {"channels_last": True}})
    plain, cl = load_model(tmp_path / "plain.safetensors"), load_model(tmp_path / "cl.safetensors")
    weight = "features.conv2.weight"  # conv1 has one input channel: both layouts are the same strides
    assert not plain.model.state_dict()[weight].is_contiguous(memory_format=torch.channels_last)
    assert cl.model.state_dict()[weight].is_contiguous(memory_format=torch.channels_last)
    assert cl.name == "cl"


def test_a_run_in_memory_on_disk_and_its_files_load_as_the_same_model(tiny_data_dir, tmp_path):
    in_memory = train(tiny_config(tiny_data_dir))
    trained = load_model(in_memory)
    assert trained.model is in_memory.model and trained.path == Path(IN_MEMORY) and trained.name == "tiny"
    assert trained.class_names == list(get_spec("fashion-mnist").class_names)
    assert load_model(trained) is trained

    on_disk = train(tiny_config(tiny_data_dir, "saved"), out=tmp_path)
    images = load_dataset("fashion-mnist", tiny_data_dir).test.images[:50]
    from_run = load_model(on_disk)
    assert from_run.path == on_disk.run_dir and from_run.name == "saved"
    for target in (on_disk.run_dir, on_disk.run_dir / MODEL_FILE, str(on_disk.run_dir)):
        from_file = load_model(target)
        assert from_file.model is not on_disk.model and from_file.config == on_disk.config
        assert torch.allclose(from_file.logits(images), from_run.logits(images), atol=1e-5)


# --------------------------------------------------------------------------- files that are not lenet models


def _edit_metadata(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(path), path, metadata=edit(dict(metadata)))


def _eight_channels(metadata):
    config = json.loads(metadata["config"])
    config["model"]["conv_channels"] = [8, 16]
    return {**metadata, "config": json.dumps(config)}


MODEL_FAULTS = {
    "weights do not match the config": (lambda p: _edit_metadata(p, _eight_channels),
                                        r"weights do not match the stored config: features\.conv1\.weight: "
                                        r"file has \(6, 1, 5, 5\), config needs \(8, 1, 5, 5\)"),
    "random bytes": (lambda p: p.write_bytes(os.urandom(2048)), "not a safetensors model file"),
    "empty file": (lambda p: p.write_bytes(b""), "not a safetensors model file"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:3000]), "not a safetensors model file"),
    "no lenet metadata": (lambda p: save_file(load_file(p), p), "a safetensors file, but not a lenet model"),
    "invalid stored config": (lambda p: _edit_metadata(p, lambda m: {**m, "config": '{"optim": {"lr": -1}}'}),
                              r"(?s)the stored config is invalid:.*optim\.lr = -1"),
    "pickle renamed": (lambda p: p.write_bytes(pickle.dumps({"fc1.weight": [[0.0] * 4]})),
                       "not a safetensors model file"),
    "torch.save renamed": (lambda p: torch.save(LeNet(build_config("d2l").model).state_dict(), p),
                           "not a safetensors model file"),
    "hostile pickle renamed": (lambda p: p.write_bytes(pickle.dumps(Payload(p.parent / "payload-ran"))),
                               "not a safetensors model file"),
    "missing": (lambda p: p.unlink(), "no such model file"),
}


def test_eval_of_a_good_model_file_works(model_dir, tiny_data_dir, capsys):
    # The control for the faults below: the same command on the undamaged file succeeds.
    assert main(["eval", str(model_dir / MODEL_FILE), "--data-dir", str(tiny_data_dir), "--device", "cpu",
                 "--out", str(model_dir / "eval")]) == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("fault", list(MODEL_FAULTS))
def test_a_bad_model_file_is_a_clear_error(model_dir, tiny_data_dir, capsys, fault):
    damage, message = MODEL_FAULTS[fault]
    path = model_dir / MODEL_FILE
    damage(path)
    with pytest.raises(RunError, match=message):
        load_model(path)
    assert main(["eval", str(path), "--data-dir", str(tiny_data_dir), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and str(path) in err
    assert err.startswith("lenet eval: error: ") and "Traceback" not in err
    assert not (model_dir / "payload-ran").exists()
