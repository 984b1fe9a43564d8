"""lenet.training.optim: one update rule per optimiser, for one model, K stacked models
and a CUDA graph's device-side lr; torch.optim's arithmetic and state without its
import cost (the schedules are tested in test_train.py)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from lenet.configuration.build import build_config
from lenet.training.optim import Optimizer, make_optimizer, set_lr
from lenet.training.stacked import StackedOptimizer

SGD_SETTINGS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"weight_decay": 5e-4},
    {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
]
ADAM_SETTINGS = [("adam", {}), ("adam", {"weight_decay": 1e-2}),
                 ("adamw", {"weight_decay": 0.0}), ("adamw", {"weight_decay": 1e-2})]


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def _train(net: nn.Module, optimizer, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        set_lr(optimizer, 0.05 / (1 + step))  # the lr changes between steps, as schedules do
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _torch_optimizer(kind: str, params, **settings):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.1, foreach=True, **settings)
    return (torch.optim.Adam if kind == "adam" else torch.optim.AdamW)(params, lr=0.1, foreach=True, **settings)


CASES = [("sgd", s) for s in SGD_SETTINGS] + ADAM_SETTINGS


@pytest.mark.parametrize("kind,settings", CASES, ids=str)
def test_each_optimizer_takes_torchs_steps_bit_for_bit(kind, settings):
    ours, theirs = _net(), _net()
    _train(ours, Optimizer(ours.parameters(), kind, lr=0.1, **settings), range(12))
    _train(theirs, _torch_optimizer(kind, theirs.parameters(), **settings), range(12))
    assert _same_weights(ours, theirs)
    assert not _same_weights(ours, _net())  # it did train


@pytest.mark.parametrize("kind,settings", CASES, ids=str)
def _keras_adam(net: nn.Module, lr: float, eps: float, steps: range) -> None:
    """Keras 3's Adam.update_step written out: eps is added to sqrt(v), and the bias
    corrections fold into the step size alpha."""
    b1, b2 = 0.9, 0.999
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in net.parameters()]
    for t, step in enumerate(steps, start=1):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        net.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        with torch.no_grad():
            for p, (m, v) in zip(net.parameters(), moments):
                m += (p.grad - m) * (1 - b1)
                v += (p.grad * p.grad - v) * (1 - b2)
                p -= m * alpha / (v.sqrt() + eps)


def test_adam_eps_hat_takes_kerass_steps():
    # eps 1e-3 (Keras' default is 1e-7) so that where it is added shows in the weights.
    keras, ours, torchs = _net(), _net(), _net()
    _keras_adam(keras, 0.01, 1e-3, range(12))
    for net, eps_hat in ((ours, True), (torchs, False)):
        optimizer = Optimizer(net.parameters(), "adam", lr=0.01, eps=1e-3, eps_hat=eps_hat)
        for step in range(12):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    assert all(torch.allclose(p, q, rtol=1e-5, atol=1e-7) for p, q in zip(ours.parameters(), keras.parameters()))
    assert not all(torch.allclose(p, q, rtol=1e-5, atol=1e-7) for p, q in zip(torchs.parameters(), keras.parameters()))
    state = Optimizer(_net().parameters(), "adam", lr=0.01, eps_hat=True).state_dict()
    assert "eps_hat" not in state["param_groups"][0]  # torch.optim's layout, as every checkpoint has


def test_make_optimizer_takes_eps_from_the_config():
    cfg = build_config("d2l", overrides=["optim.optimizer=adam", "optim.eps=1e-3", "optim.eps_hat=true"])
    optimizer = make_optimizer(_net().parameters(), cfg)
    assert (optimizer.param_groups[0]["eps"], optimizer.eps_hat) == (1e-3, True)
    assert make_optimizer(_net().parameters(), build_config("d2l", overrides=["optim.optimizer=adam"])).eps_hat is False


@pytest.mark.parametrize("kind,settings", CASES, ids=str)
def test_optimizer_state_goes_to_and_from_torchs(kind, settings):
    """A checkpoint written by either continues in the other exactly (run directories
    of lenet 0.2 hold torch.optim's state)."""
    reference = _net()
    _train(reference, _torch_optimizer(kind, reference.parameters(), **settings), range(10))

    def ours(params):
        return Optimizer(params, kind, lr=0.1, **settings)

    def theirs(params):
        return _torch_optimizer(kind, params, **settings)

    for first, second in ((theirs, ours), (ours, theirs)):
        net = _net()
        opt = first(net.parameters())
        _train(net, opt, range(5))
        resumed = second(net.parameters())
        resumed.load_state_dict(opt.state_dict())
        _train(net, resumed, range(5, 10))
        assert _same_weights(net, reference), (first.__name__, second.__name__)


def test_sgd_state_dict_has_torchs_param_groups():
    for settings in SGD_SETTINGS:
        lean = Optimizer(_net().parameters(), "sgd", lr=0.1, **settings)
        torch_sgd = torch.optim.SGD(_net().parameters(), lr=0.1, foreach=True, **settings)
        assert lean.state_dict()["param_groups"] == torch_sgd.state_dict()["param_groups"]


def test_optimizer_refuses_what_torch_refuses():
    small = Optimizer(nn.Linear(2, 2).parameters(), "sgd", lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="doesn't match"):
        small.load_state_dict(Optimizer(_net().parameters(), lr=0.1).state_dict())
    with pytest.raises(ValueError, match="empty parameter list"):
        Optimizer([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        Optimizer(_net().parameters(), lr=0.1, nesterov=True)


def test_optimizer_skips_parameters_without_gradients():
    net = _net()
    frozen = [p.detach().clone() for p in net[0].parameters()]
    net[0].requires_grad_(False)
    _train(net, Optimizer(net.parameters(), "adam", lr=0.1), range(3))
    assert all(torch.equal(p, q) for p, q in zip(net[0].parameters(), frozen))


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_a_device_side_lr_takes_the_same_steps_up_to_rounding(kind):
    """The graphable form (lr and Adam's step count as tensors, as a CUDA graph records
    them) runs the same rule: its weights follow the plain form's."""
    cfg = build_config("d2l", overrides=[f"optim.optimizer={kind}", "optim.momentum=0.9" if kind == "sgd"
                                         else "optim.weight_decay=0.01"])
    plain, graphable = _net(), _net()
    a, b = make_optimizer(plain.parameters(), cfg), make_optimizer(graphable.parameters(), cfg, graphable=True)
    assert isinstance(b.param_groups[0]["lr"], torch.Tensor)
    _train(plain, a, range(8))
    _train(graphable, b, range(8))
    assert all(torch.allclose(p, q, rtol=1e-5, atol=1e-6) for p, q in zip(plain.parameters(), graphable.parameters()))
    if kind != "sgd":
        assert int(b.state[next(graphable.parameters())]["step"]) == 8


@pytest.mark.parametrize("kind, extra", [("sgd", []), ("adam", []), ("adamw", []),
                                         ("adam", ["optim.eps=1e-3", "optim.eps_hat=true"])])
def test_stacked_models_each_follow_their_own_run(kind, extra):
    """K models stacked, each with its own lr, momentum and weight decay, step as K
    separate optimisers would (up to rounding), and hand back each one's own state."""
    torch.manual_seed(0)
    cfgs = [build_config("d2l", overrides=[f"optim.optimizer={kind}", f"optim.lr={lr}", f"optim.momentum={m}",
                                           f"optim.weight_decay={wd}", *extra])
            for lr, m, wd in ((0.1, 0.9, 0.0), (0.02, 0.0, 0.01), (0.05, 0.5, 0.001))]
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(12, 5)) for _ in cfgs]
    singles = [nn.Sequential(nn.Flatten(), nn.Linear(12, 5)) for _ in cfgs]
    for s, n in zip(singles, nets):
        s.load_state_dict(n.state_dict())
    params = dict(zip(("1.weight", "1.bias"), [torch.stack([dict(n.named_parameters())[k] for n in nets]).detach()
                                                  .requires_grad_() for k in ("1.weight", "1.bias")]))
    together = StackedOptimizer(params, cfgs)
    apart = [make_optimizer(s.parameters(), c) for s, c in zip(singles, cfgs)]
    for step in range(6):
        x = torch.randn(len(cfgs), 8, 12, generator=torch.Generator().manual_seed(step))
        y = torch.randint(0, 5, (len(cfgs), 8), generator=torch.Generator().manual_seed(100 + step))
        together.zero_grad()
        set_lr(together, torch.tensor([c.optim.lr for c in cfgs]) / (1 + step))
        logits = torch.baddbmm(params["1.bias"].unsqueeze(1), x, params["1.weight"].transpose(1, 2))
        nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(3, 8).mean(1).sum() \
            .backward()
        together.step()
        for k, (s, opt, c) in enumerate(zip(singles, apart, cfgs)):
            opt.zero_grad()
            set_lr(opt, c.optim.lr / (1 + step))
            nn.functional.cross_entropy(s(x[k]), y[k]).backward()
            opt.step()
    for k, s in enumerate(singles):
        assert torch.allclose(params["1.weight"][k], s[1].weight, rtol=1e-5, atol=1e-6)
        own, theirs = together.model_state(k), apart[k].state_dict()
        assert own["param_groups"][0]["lr"] == cfgs[k].optim.lr  # the schedule sets each step's
        assert {key: v for key, v in own["param_groups"][0].items() if key != "lr"} == \
            {key: v for key, v in theirs["param_groups"][0].items() if key != "lr"}
        assert sorted(own["state"]) == sorted(theirs["state"])
        for i in own["state"]:
            for key, value in own["state"][i].items():
                assert torch.allclose(value, theirs["state"][i][key], rtol=1e-5, atol=1e-6), (k, i, key)


@pytest.mark.slow
def test_training_the_book_recipe_never_imports_torch_dynamo(tiny_data_dir):
    """torch.optim's classes import torch._dynamo on first use, seconds of a CPU run: a
    run, from the front door to the saved files, leaves it unimported."""
    code = textwrap.dedent(f"""
        import sys, lenet
        for preset in ("d2l", "keras-v1"):
            run = lenet.train(lenet.config(preset, epochs=1, batch_size=64, data_dir={str(tiny_data_dir)!r},
                                           precision="fp32", name=preset), out="runs")
            assert (run.run_dir / "model.safetensors").exists()
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr
