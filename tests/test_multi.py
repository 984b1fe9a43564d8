"""Many models at once: grouping rules, and results equal to separate runs."""

from __future__ import annotations

import json

import pytest

from lenet.runconfig import build_config
from lenet.multi import group_key, groups, train_many
from lenet.errors import UsageError
from lenet.training import train


def cfg(data_dir, *overrides, preset="keras-v2", epochs=2):
    return build_config(preset, overrides=[f"data.data_dir={data_dir}", "out=runs", f"train.epochs={epochs}",
                                           "device=cpu", "model.dropout=0", *overrides])


def test_grouping_rules(tiny_data_dir):
    base = cfg(tiny_data_dir, "name=a")
    same = [cfg(tiny_data_dir, "seed=3"), cfg(tiny_data_dir, "optim.lr=0.01"), cfg(tiny_data_dir, "model.init=kaiming"),
            cfg(tiny_data_dir, "optim.schedule=cosine", "optim.weight_decay=0.1")]
    assert all(group_key(c) == group_key(base) for c in same)
    other = [cfg(tiny_data_dir, "model.activation=tanh"), cfg(tiny_data_dir, "train.batch_size=32"),
             cfg(tiny_data_dir, "model.kernel_size=3"), cfg(tiny_data_dir, "data.dataset=mnist"),
             cfg(tiny_data_dir, "optim.optimizer=sgd")]
    assert all(group_key(c) != group_key(base) for c in other)
    assert group_key(cfg(tiny_data_dir, "model.batch_norm=true")) is None
    assert groups([base, same[0], other[0], cfg(tiny_data_dir, "model.batch_norm=true")]) == [[0, 1], [2], [3]]


@pytest.mark.parametrize("optimizer, extra", [("adam", ["data.val_split=0.2"]),
                                              ("sgd", ["optim.lr=0.2", "optim.momentum=0.9",
                                                       "optim.schedule=onecycle"]),
                                              ("adamw", ["optim.weight_decay=0.05"])])
def test_weights_equal_separate_runs_for_smooth_networks(tiny_data_dir, optimizer, extra):
    # Sigmoid and average pooling have no ties, so rounding differences between batched
    # and single kernels stay at rounding size; the weights must agree to ~1e-6.
    smooth = ["model.activation=sigmoid", "model.pool=avg", f"optim.optimizer={optimizer}", *extra]
    cfgs = [cfg(tiny_data_dir, *smooth, f"seed={s}", f"name=m{s}") for s in (0, 1)]
    cfgs.append(cfg(tiny_data_dir, *smooth, "seed=2", "model.init=kaiming", "name=m2"))
    together = train_many(cfgs)
    for c, multi in zip(cfgs, together):
        single = train(c.model_copy(update={"name": f"{c.name}-single"}), out="runs")
        for key, value in single.model.state_dict().items():
            relative = (multi.model.state_dict()[key] - value).norm() / value.norm()
            assert relative < 1e-4, (key, float(relative))
        for a, b in zip(multi.history, single.history):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert (a["val_accuracy"] is None) == (b["val_accuracy"] is None)
        for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "model.safetensors", "curves.png"):
            assert (multi.run_dir / name).is_file()


def test_relu_max_pool_runs_match_separate_runs_within_noise(tiny_data_dir):
    # ReLU and max-pool have ties that rounding can flip, after which two runs drift apart
    # like two seeds would; the results, not the weights, must agree.
    cfgs = [cfg(tiny_data_dir, f"seed={s}", f"name=r{s}", epochs=3) for s in (0, 1)]
    for c, multi in zip(cfgs, train_many(cfgs)):
        single = train(c.model_copy(update={"name": f"{c.name}-single"}), out="runs")
        assert multi.test_accuracy == pytest.approx(single.test_accuracy, abs=0.03)  # 6 of 200 images
        assert multi.history[-1]["train_loss"] == pytest.approx(single.history[-1]["train_loss"], rel=0.1)


def test_a_diverging_model_does_not_stop_the_others(tiny_data_dir):
    cfgs = [cfg(tiny_data_dir, "optim.optimizer=sgd", "optim.lr=0.05", "name=ok"),
            cfg(tiny_data_dir, "optim.optimizer=sgd", "optim.lr=100", "name=bad")]
    ok, bad = train_many(cfgs)
    assert ok.status == "finished" and len(ok.history) == 2 and ok.test_accuracy > 0.3
    status = json.loads((bad.run_dir / "status.json").read_text())
    assert bad.status == "diverged" and status["status"] == "diverged" and "step" in status["reason"]
    assert not (bad.run_dir / "model.safetensors").exists()


def test_refuses_runs_that_cannot_batch(tiny_data_dir):
    with pytest.raises(UsageError, match="differ only in"):
        train_many([cfg(tiny_data_dir), cfg(tiny_data_dir, "model.activation=tanh")])
