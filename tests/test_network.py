"""The network (model/network.py): the chapter's shapes, the registry, configurable architectures, summary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lenet.model.network import ModelConfig
from lenet.configuration.build import build_config
from lenet.errors import ConfigError, UsageError
from lenet.model.network import (LeNet, count_parameters, create_model, list_models, model_config, summarize)


def test_d2l_lenet5_shapes_and_parameters_are_the_chapters():
    model = LeNet(build_config("d2l").model)
    rows = summarize(model)
    shapes = {r.name: r.output_shape for r in rows}
    assert shapes["act1"] == (6, 28, 28) and shapes["pool1"] == (6, 14, 14)
    assert shapes["conv2"] == (16, 10, 10) and shapes["pool2"] == (16, 5, 5)
    assert [shapes[k] for k in ("flatten", "fc1", "fc2", "fc3")] == [(400,), (120,), (84,), (10,)]
    assert count_parameters(model) == 61_706 == sum(r.parameters for r in rows)
    # 6*28*28*25 + 16*10*10*150 + 400*120 + 120*84 + 84*10 multiply-adds
    assert sum(r.mult_adds for r in rows) == 117_600 + 240_000 + 48_000 + 10_080 + 840


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(4, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "overrides, out_shape",
    [
        ({"kernel_size": 3, "padding": 1}, (16, 7, 7)),
        ({"conv_channels": [8, 16, 32], "kernel_size": 3, "padding": 1}, (32, 3, 3)),
        ({"pool": "none", "kernel_size": 3, "padding": 0}, (16, 24, 24)),
        ({"conv_channels": [4], "dense": []}, (4, 14, 14)),
        ({"pool_size": 3, "pool_stride": 2, "padding": 2}, (16, 6, 6))  # 28->13->13->6,
    ],
)
def test_configurable_architectures(overrides, out_shape):
    model = LeNet(ModelConfig(**overrides))
    features = model.features(torch.zeros(2, 1, 28, 28))
    assert features.shape[1:] == out_shape
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_activation_pool_dropout_batchnorm_layers_are_built():
    model = LeNet(ModelConfig(activation="gelu", pool="max", dropout=0.3, dropout_where="all",
                              batch_norm=True, dense=[64, 32, 16]))
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(nn.GELU) == 2 + 3 and kinds.count(nn.MaxPool2d) == 2
    assert kinds.count(nn.Dropout) == 3 and kinds.count(nn.BatchNorm2d) == 2 and kinds.count(nn.BatchNorm1d) == 3
    first_only = LeNet(ModelConfig(dropout=0.5))
    assert [n for n, m in first_only.named_modules() if isinstance(m, nn.Dropout)] == ["classifier.dropout1"]


@pytest.mark.parametrize("init", ["xavier", "xavier_normal", "kaiming", "normal", "default"])
def test_initialisations_differ_and_zero_biases(init):
    torch.manual_seed(0)
    model = LeNet(ModelConfig(init=init))
    conv1 = model.features.conv1
    if init == "default":
        assert conv1.bias.abs().sum() > 0  # PyTorch's own init draws biases too
    else:
        assert conv1.bias.abs().sum() == 0
    if init == "normal":
        assert conv1.weight.std().item() == pytest.approx(0.01, rel=0.3)
    if init == "xavier":
        bound = (6 / (25 * 1 + 25 * 6)) ** 0.5  # fan_in = 1*5*5, fan_out = 6*5*5
        assert conv1.weight.abs().max() <= bound


def test_impossible_architecture_is_rejected_before_building():
    with pytest.raises(ConfigError, match="conv2"):
        LeNet(ModelConfig(kernel_size=[5, 15]))


def test_registry_lookup():
    assert "lenet5" in list_models() and list_models("lenet5-*")
    assert model_config("lenet5-v2", dropout=None).dropout == 0.5  # None = keep
    with pytest.raises(UsageError, match="lenet models"):
        model_config("vgg16")
