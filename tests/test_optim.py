"""lenet.training.optim: LeanSGD is torch.optim.SGD's arithmetic and state without its import cost
(the schedules are tested in test_train.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from lenet.training.optim import LeanSGD, set_lr

SETTINGS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"weight_decay": 5e-4},
    {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
]


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def _train(net: nn.Module, optimizer, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        set_lr(optimizer, 0.5 / (1 + step))  # the lr changes between steps, as schedules do
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_lean_sgd_takes_torch_sgds_steps_bit_for_bit(settings):
    ours, theirs = _net(), _net()
    _train(ours, LeanSGD(ours.parameters(), lr=0.1, **settings), range(12))
    _train(theirs, torch.optim.SGD(theirs.parameters(), lr=0.1, foreach=True, **settings), range(12))
    assert _same_weights(ours, theirs)
    assert not _same_weights(ours, _net())  # it did train


@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_lean_sgd_state_goes_to_and_from_torch_sgd(settings):
    """A checkpoint written by either continues in the other exactly (older run
    directories hold torch.optim.SGD's state)."""
    reference = _net()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, foreach=True, **settings)
    _train(reference, ref_opt, range(10))

    for first, second in ((torch.optim.SGD, LeanSGD), (LeanSGD, torch.optim.SGD)):
        net = _net()
        kwargs = {"foreach": True} if first is torch.optim.SGD else {}
        opt = first(net.parameters(), lr=0.1, **settings, **kwargs)
        _train(net, opt, range(5))
        saved = opt.state_dict()
        kwargs = {"foreach": True} if second is torch.optim.SGD else {}
        resumed = second(net.parameters(), lr=0.1, **settings, **kwargs)
        resumed.load_state_dict(saved)
        _train(net, resumed, range(5, 10))
        assert _same_weights(net, reference), (first.__name__, second.__name__)

    lean = LeanSGD(_net().parameters(), lr=0.1, **settings)
    torch_sgd = torch.optim.SGD(_net().parameters(), lr=0.1, foreach=True, **settings)
    assert lean.state_dict()["param_groups"] == torch_sgd.state_dict()["param_groups"]


def test_lean_sgd_refuses_a_state_for_other_parameters():
    small = LeanSGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="doesn't match"):
        small.load_state_dict(LeanSGD(_net().parameters(), lr=0.1).state_dict())
    with pytest.raises(ValueError, match="empty parameter list"):
        LeanSGD([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        LeanSGD(_net().parameters(), lr=0.1, nesterov=True)


def test_lean_sgd_skips_parameters_without_gradients():
    net = _net()
    frozen = [p.detach().clone() for p in net[0].parameters()]
    net[0].requires_grad_(False)
    _train(net, LeanSGD(net.parameters(), lr=0.1, momentum=0.9), range(3))
    assert all(torch.equal(p, q) for p, q in zip(net[0].parameters(), frozen))


def test_training_the_book_recipe_never_imports_torch_dynamo(tiny_data_dir):
    """The 1.3 s LeanSGD exists to save: a run with SGD, from the front door to the saved
    files, leaves torch._dynamo unimported (torch.optim's classes import it)."""
    code = textwrap.dedent(f"""
        import sys, lenet
        run = lenet.train(lenet.config("d2l", epochs=1, batch_size=64, data_dir={str(tiny_data_dir)!r},
                                       precision="fp32"), out="runs")
        assert (run.run_dir / "model.safetensors").exists()
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr
