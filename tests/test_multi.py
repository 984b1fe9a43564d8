"""Many models at once: grouping rules, and results equal to separate runs."""

from __future__ import annotations

import json

import pytest

from lenet.configuration.build import build_config
from lenet.training.groups import group_key, groups
from lenet.training.run import train_many
from lenet.errors import UsageError
from lenet.training.run import train


def cfg(data_dir, *overrides, preset="keras-v2-scaled", epochs=2):
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


@pytest.mark.parametrize("select", ["last", "stratified"])
def test_each_run_of_a_group_holds_out_the_rows_its_own_run_would(tiny_data_dir, select):
    import torch

    from lenet.data.datasets import prepare_data
    from lenet.training.groups import group_data

    cfgs = [cfg(tiny_data_dir, f"seed={s}", f"data.val_select={select}") for s in (0, 1)]
    data = group_data(cfgs, torch.device("cpu"))
    alone = [prepare_data(c, torch.device("cpu")).val_index for c in cfgs]
    assert data.val_index.shape == (2, 60) and all(torch.equal(data.val_index[k], v) for k, v in enumerate(alone))
    assert torch.equal(alone[0], alone[1]) == (select == "last")  # Keras' rows: the same for every seed


@pytest.mark.parametrize("optimizer, extra", [("adam", ["data.val_split=0.2"]),
                                              ("sgd", ["optim.lr=0.2", "optim.momentum=0.9",
                                                       "optim.schedule=onecycle"]),
                                              ("adamw", ["optim.weight_decay=0.05"])])
@pytest.mark.slow
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- resume, and the speed switches


class Killed(Exception):
    """A process that dies mid-run: nothing after the raise runs (no Ctrl-C handling)."""


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "model.safetensors")


def _group(tiny_data_dir, prefix, epochs=3):
    smooth = ["model.activation=sigmoid", "model.pool=avg", "optim.optimizer=adam", "data.val_split=0.2"]
    return [cfg(tiny_data_dir, *smooth, f"seed={s}", f"name={prefix}{s}", epochs=epochs) for s in (0, 1)]


@pytest.mark.parametrize("where", ["killed after epoch 1", "ctrl-c inside epoch 2"])
@pytest.mark.slow
def test_an_interrupted_group_resumes_together_bitwise(tiny_data_dir, monkeypatch, where):
    import os
    import signal
    from pathlib import Path

    import torch

    import lenet.training.learners
    from lenet.errors import Interrupted
    from lenet.training.run import resume_many

    reference = train_many(_group(tiny_data_dir, "ref"))
    real_step = lenet.training.learners.GroupLearner.step
    steps = {"n": 0}

    def step_then_stop(self, x, y, global_step):
        steps["n"] += 1
        if where == "killed after epoch 1" and global_step == self.steps_per_epoch:
            raise Killed  # the first step of epoch 2: as if the process died there
        if where == "ctrl-c inside epoch 2" and global_step == self.steps_per_epoch + 3:
            os.kill(os.getpid(), signal.SIGINT)  # the loop finishes this step and saves
        return real_step(self, x, y, global_step)

    monkeypatch.setattr(lenet.training.learners.GroupLearner, "step", step_then_stop)
    expected = Killed if where == "killed after epoch 1" else Interrupted
    with pytest.raises(expected):
        train_many(_group(tiny_data_dir, "cut"))
    monkeypatch.setattr(lenet.training.learners.GroupLearner, "step", real_step)
    dirs = [Path("runs/cut0"), Path("runs/cut1")]
    status = json.loads((dirs[0] / "status.json").read_text())
    assert status["status"] == ("running" if where == "killed after epoch 1" else "interrupted")
    assert status["epoch"] == 2  # a process killed outright still says how far it got
    resumed = resume_many(dirs)
    for ref, run in zip(reference, resumed):
        assert [r["epoch"] for r in run.history] == [1, 2, 3]
        assert [r["train_loss"] for r in run.history] == [r["train_loss"] for r in ref.history]
        for key, value in _weights(ref.run_dir).items():
            assert torch.equal(value, _weights(run.run_dir)[key]), key


@pytest.mark.slow
def test_a_run_of_a_group_resumes_alone_too(tiny_data_dir, monkeypatch):
    from pathlib import Path

    import lenet.training.learners
    from lenet.training.run import resume

    reference = train_many(_group(tiny_data_dir, "ref"))

    def stop(self, x, y, global_step):
        raise Killed

    real_step = lenet.training.learners.GroupLearner.step
    monkeypatch.setattr(lenet.training.learners.GroupLearner, "step", lambda self, x, y, g: stop(self, x, y, g)
                        if g == 2 * self.steps_per_epoch else real_step(self, x, y, g))
    with pytest.raises(Killed):
        train_many(_group(tiny_data_dir, "cut"))
    alone = resume(Path("runs/cut1"))  # a single run's checkpoint: the plain loop continues it
    assert [r["epoch"] for r in alone.history] == [1, 2, 3]
    assert alone.history[-1]["train_loss"] == pytest.approx(reference[1].history[-1]["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_amp_is_honoured_and_the_other_switches_are_refused(tiny_data_dir):
    plain = train_many([cfg(tiny_data_dir, "seed=0", "name=p0"), cfg(tiny_data_dir, "seed=1", "name=p1")])
    amp = train_many([cfg(tiny_data_dir, "seed=0", "name=a0", "speed.amp=true"),
                      cfg(tiny_data_dir, "seed=1", "name=a1", "speed.amp=true")])
    # bf16 forward passes round differently: the weights differ, the accuracy does not.
    assert not all(torch_equal(plain[0].model, amp[0].model))
    assert amp[0].test_accuracy == pytest.approx(plain[0].test_accuracy, abs=0.05)
    for switch in ("compile", "channels_last", "fused_layers"):
        bad = [cfg(tiny_data_dir, f"seed={seed}", f"train.{switch}=true") for seed in (0, 1)]
        assert group_key(bad[0]) is None  # a sweep trains such runs one by one
        name = "speed.fused_layers" if switch == "fused_layers" else f"--{switch.replace('_', '-')}"
        with pytest.raises(UsageError, match=f"{name} does not work for runs trained together"):
            train_many(bad)


def torch_equal(a, b):
    import torch

    return [torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())]


def test_the_one_channel_convolution_as_im2col_equals_the_grouped_convolution():
    """The GPU's form of the first convolution (StackedModels._one_channel_conv), checked
    on the CPU against the grouped convolution and against each model alone."""
    import torch

    from lenet.model.network import LeNet
    from lenet.training.stacked import StackedModels

    torch.manual_seed(0)
    models = [LeNet(cfg_model()) for _ in range(3)]
    stacked = StackedModels(models)
    x = torch.rand(3, 16, 1, 28, 28)
    outputs, grads = {}, {}
    for im2col in (False, True):
        stacked.im2col_one_channel = im2col
        outputs[im2col] = stacked(x)
        grads[im2col] = torch.autograd.grad(outputs[im2col].square().sum(), list(stacked.stacked_params.values()))
    assert torch.allclose(outputs[True], outputs[False], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(grads[True], grads[False]))
    for k, model in enumerate(models):
        assert torch.allclose(model(x[k]), outputs[True][k], atol=1e-5)


def cfg_model():
    from lenet.configuration.build import build_config

    return build_config("d2l").model
