"""The CUDA paths: whole-step CUDA graphs, bf16 autocast, grouped training, evaluation
and prediction on the GPU. Every test here needs CUDA and is skipped, saying so,
where there is none (CI has no GPU: these run on a GPU machine, see the README)."""

from __future__ import annotations

import pytest
import torch

import lenet
from lenet.training.run import train_many

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cfg(data_dir, *overrides, preset="keras-v2-scaled", epochs=2, name="run"):
    return lenet.config(preset, epochs=epochs, data_dir=str(data_dir), device="cuda", name=name,
                        set=dict(o.split("=", 1) for o in overrides) if overrides else None)


def relative(a: torch.nn.Module, b: torch.nn.Module) -> float:
    worst = 0.0
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        x, y = x.cpu(), y.cpu()
        if x.is_floating_point():
            worst = max(worst, float((x.float() - y.float()).norm() / max(float(y.float().norm()), 1e-12)))
    return worst


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_cuda_graphs_train_the_same_steps_as_the_eager_loop(tiny_data_dir, optimizer):
    # Sigmoid + average pooling and no dropout: no ties, no randomness inside the step,
    # so only the kernels' rounding may separate the recorded step from the eager one.
    smooth = {"model.activation": "sigmoid", "model.pool": "avg", "model.dropout": 0, "optim.optimizer": optimizer,
              "optim.momentum": 0.9 if optimizer == "sgd" else 0.0, "optim.lr": 0.1 if optimizer == "sgd" else 1e-3,
              "optim.schedule": "onecycle", "train.batch_size": 64}  # 600 examples: a short last batch
    eager = lenet.train(lenet.config("keras-v2-scaled", epochs=2, data_dir=str(tiny_data_dir), device="cuda",
                                     set=smooth))
    graphed = lenet.train(lenet.config("keras-v2-scaled", epochs=2, data_dir=str(tiny_data_dir), device="cuda",
                                       cuda_graphs=True, set=smooth))
    assert relative(graphed.model, eager.model) < 1e-3
    assert graphed.history[-1]["train_loss"] == pytest.approx(eager.history[-1]["train_loss"], rel=1e-3)


def test_cuda_graph_runs_checkpoint_and_resume(tiny_data_dir):
    class Stop(Exception):
        pass

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        lenet.train(cfg(tiny_data_dir, "speed.cuda_graphs=true", epochs=3, name="g"), out="runs",
                    on_epoch=stop_after_first)
    resumed = lenet.resume("runs/g")
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3] and resumed.test_accuracy > 0.5


@pytest.mark.parametrize("switches", [["speed.cuda_graphs=true"], ["speed.amp=true", "speed.channels_last=true"],
                                      ["speed.cuda_graphs=true", "speed.amp=true"], ["speed.compile=true"]])
def test_gpu_switches_reach_the_plain_accuracy(tiny_data_dir, switches):
    plain = lenet.train(cfg(tiny_data_dir, "model.dropout=0", epochs=3))
    fast = lenet.train(cfg(tiny_data_dir, "model.dropout=0", *switches, epochs=3))
    assert fast.test_accuracy == pytest.approx(plain.test_accuracy, abs=0.04)


def test_batch_norm_speedrun_recipe_with_graphs(tiny_data_dir):
    run = lenet.train(lenet.config("speedrun-fashion-mnist", epochs=3, data_dir=str(tiny_data_dir), device="cuda",
                                   cuda_graphs=True))
    assert run.test_accuracy > 0.6


def test_grouped_training_on_cuda_matches_separate_runs(tiny_data_dir):
    smooth = ["model.activation=sigmoid", "model.pool=avg", "model.dropout=0"]
    cfgs = [cfg(tiny_data_dir, *smooth, f"seed={s}", name=f"m{s}") for s in range(4)]
    cfgs = [c.model_copy(update={"seed": s}) for s, c in enumerate(cfgs)]
    together = train_many(cfgs)
    for c, multi in zip(cfgs, together):
        single = lenet.train(c)
        assert relative(multi.model, single.model) < 1e-3
    # bf16 on the GPU: the ReLU network that learns these bars in a few epochs (the
    # sigmoid one above is still near chance after 2), fp32 and bf16 side by side.
    fast = [cfg(tiny_data_dir, "model.dropout=0", f"seed={s}", name=f"f{s}", epochs=3) for s in range(4)]
    plain = train_many([c.model_copy(update={"seed": s}) for s, c in enumerate(fast)])
    amp = train_many([c.model_copy(update={"seed": s, "name": f"a{s}",
                                           "train": c.train.model_copy(update={"amp": True})})
                      for s, c in enumerate(fast)])
    for a, p in zip(amp, plain):  # bf16 rounds differently: the results, not the weights, agree
        assert a.status == "finished" and p.test_accuracy > 0.5 and a.test_accuracy == pytest.approx(
            p.test_accuracy, abs=0.1)


def test_evaluate_and_predict_on_cuda(tiny_data_dir):
    run = lenet.train(cfg(tiny_data_dir, epochs=1, name="e"), out="runs")
    on_gpu = lenet.evaluate("runs/e", data_dir=str(tiny_data_dir), device="cuda")
    on_cpu = lenet.evaluate("runs/e", data_dir=str(tiny_data_dir), device="cpu")
    assert on_gpu.accuracy == pytest.approx(on_cpu.accuracy, abs=0.01) and on_gpu.accuracy == pytest.approx(
        run.test_accuracy, abs=0.01)
    from lenet.data.datasets import load_dataset

    picture = load_dataset("fashion-mnist", str(tiny_data_dir)).test.images[0, 0].numpy()
    predictor = lenet.Predictor("runs/e", device="cuda")
    assert predictor.probabilities(picture[None]).shape == (1, 10)
