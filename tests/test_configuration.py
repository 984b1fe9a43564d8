"""Config: presets, files, overrides, and every kind of bad value gives a ConfigError."""

from __future__ import annotations

import pytest

from lenet.configuration.build import build_config, parse_override

from lenet.configuration.presets import PRESETS
from lenet.errors import ConfigError


def test_d2l_preset_is_the_chapters_recipe():
    cfg = build_config("d2l")
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs) == ("sgd", 0.9, 256, 10)
    m = cfg.model
    assert (m.conv_channels, m.kernel_size, m.padding) == ([6, 16], [5, 5], [2, 0])
    assert (m.activation, m.pool, m.dense, m.init, m.dropout) == ("sigmoid", "avg", [120, 84], "xavier", 0.0)
    assert cfg.data.val_split == 0.0 and cfg.data.normalize == "unit"


def test_keras_presets():
    v1, v2 = build_config("keras-v1"), build_config("keras-v2")
    for cfg in (v1, v2):
        assert (cfg.optim.optimizer, cfg.optim.lr, cfg.train.batch_size, cfg.data.val_split) == ("adam", 1e-3, 64, 0.1)
        assert cfg.model.padding == ["same", 0]
        # What the Keras code does without saying: raw 0-255 pixels, validation_split's
        # last 10% unshuffled, Adam's epsilon 1e-7 before the bias correction, the loss of
        # probabilities clipped at 1e-7, Glorot uniform kernels with zero biases.
        assert (cfg.data.normalize, cfg.data.val_select) == ("raw", "last")
        assert (cfg.optim.eps, cfg.optim.eps_hat, cfg.optim.probability_clip) == (1e-7, True, 1e-7)
        assert cfg.model.init == "xavier"
    assert (v1.model.activation, v1.model.pool, v1.model.dropout) == ("sigmoid", "avg", 0.0)
    assert (v2.model.activation, v2.model.pool, v2.model.dropout) == ("relu", "max", 0.5)


def test_normalize_and_val_select_refuse_unknown_choices():
    assert build_config(None, overrides=["data.normalize=raw"]).data.normalize == "raw"
    with pytest.raises(ConfigError, match="data.normalize"):
        build_config(None, overrides=["data.normalize=bytes"])
    with pytest.raises(ConfigError, match="data.val_select"):
        build_config(None, overrides=["data.val_select=first"])
    with pytest.raises(ConfigError, match="optim.eps"):
        build_config(None, overrides=["optim.eps=0"])


def test_file_then_overrides_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: keras-v2\noptim:\n  lr: 0.01\ntrain:\n  epochs: 3\n")
    cfg = build_config(None, path, ["train.epochs=4", "model.kernel_size=3"], {"optim.lr": 0.02, "seed": None})
    assert cfg.preset == "keras-v2" and cfg.optim.lr == 0.02 and cfg.train.epochs == 4
    assert cfg.model.kernel_size == [3, 3] and cfg.model.activation == "relu"


def test_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[optim]\noptimizer = "adamw"\nweight_decay = 0.05\n')
    cfg = build_config(None, path)
    assert cfg.optim.optimizer == "adamw" and cfg.optim.weight_decay == 0.05


def test_registered_model_fields_apply_beneath_explicit_ones():
    cfg = build_config("d2l", flags={"model.name": "lenet5-bn"})
    assert cfg.model.batch_norm is True and cfg.model.activation == "sigmoid"
    cfg = build_config("d2l", overrides=["model.name=lenet5-v2", "model.dropout=0.2"])
    assert (cfg.model.activation, cfg.model.dropout) == ("relu", 0.2)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=0.1", "did you mean 'optim.lr'"),
        ("trian.epochs=3", "did you mean 'train'"),
        ("optim.lr=0", "optim.lr = 0"),
        ("optim.lr=-1", "optim.lr"),
        ("train.batch_size=0", "train.batch_size = 0"),
        ("model.dropout=1.0", "model.dropout = 1.0"),
        ("data.val_split=1.5", "data.val_split"),
        ("data.val_split=-0.1", "data.val_split"),
        ("train.epochs=ten", "train.epochs"),
        ("model.activation=swish", "model.activation"),
        ("model.pool=median", "model.pool"),
        ("model.kernel_size=[5,5,5]", "kernel_size has 3 values but there are 2 conv blocks"),
        ("model.conv_channels=[6,0]", "model.conv_channels"),
        ("device=tpu", "device"),
        ("data.dataset=cifar100", "data.dataset"),
    ],
)
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ConfigError) as info:
        build_config("d2l", overrides=[override])
    assert needle in str(info.value)
    assert info.value.exit_code == 2


def test_impossible_architecture_names_the_layer():
    with pytest.raises(ConfigError, match=r"conv3 \(kernel 7, padding 0\) gets a 16x5x5 input"):
        build_config("d2l", overrides=["model.conv_channels=[6,16,32]", "model.kernel_size=[5,5,7]"])
    with pytest.raises(ConfigError, match=r"pool2 .* 16x1x1 input"):
        build_config("d2l", overrides=["model.kernel_size=[5,14]"])


def test_syntax_errors_name_the_file_and_line(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim:\n  lr: [0.1\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: YAML syntax error at line \d+"):
        build_config(None, bad_yaml)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[optim\nlr = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: TOML syntax error"):
        build_config(None, bad_toml)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_config(None, not_mapping)
    with pytest.raises(ConfigError, match="not found"):
        build_config(None, tmp_path / "missing.yaml")


def test_unknown_preset_and_model():
    assert build_config("D2L").preset == "d2l"  # preset names match whatever the case
    with pytest.raises(ConfigError, match="did you mean 'd2l'"):
        build_config("d2x")
    with pytest.raises(ConfigError, match="unknown model 'resnet50'; `lenet models` lists"):
        build_config("d2l", flags={"model.name": "resnet50"})


def test_parse_override_types():
    assert parse_override("optim.lr=0.1") == ("optim.lr", 0.1)
    assert parse_override("model.dense=[64]") == ("model.dense", [64])
    assert parse_override("model.pool=max") == ("model.pool", "max")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")


def test_every_preset_validates():
    for name in PRESETS:
        assert build_config(name).preset == name


def test_speedrun_presets_stay_within_100k_parameters():
    from lenet.model.network import LeNet, count_parameters

    for name in ("speedrun-mnist", "speedrun-fashion-mnist"):
        cfg = build_config(name)
        assert count_parameters(LeNet(cfg.model)) <= 100_000
        assert cfg.model.batch_norm and cfg.optim.schedule == "onecycle"


def test_the_record_presets_stay_within_100k_parameters_and_choose_on_validation():
    from lenet.model.network import LeNet, count_parameters

    for name, dataset in (("best-fashion-mnist", "fashion-mnist"), ("best-mnist", "mnist")):
        cfg = build_config(name)
        assert count_parameters(LeNet(cfg.model)) <= 100_000
        assert cfg.data.dataset == dataset and cfg.data.val_split > 0 and cfg.data.augment.active
    assert build_config("best-fashion-mnist").data.augment.flip
    assert not build_config("best-mnist").data.augment.flip  # digits are not mirror images
