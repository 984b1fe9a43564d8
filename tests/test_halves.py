"""Halves (halves.py): both halves of a batch at once, one thread each, and the same
update as the two halves one after the other, bit for bit."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import torch

from lenet.speed.halves import halved_threads, in_halves
from lenet.configuration.build import build_config
from lenet.speed.choice import Speed


def test_in_halves_runs_the_halves_at_once_on_half_the_threads_each(two_threads):
    seen = []
    both_running = threading.Barrier(2, timeout=10)  # each half waits for the other: at once, or a timeout

    def part(xs, ys):
        both_running.wait()
        seen.append((threading.get_ident(), torch.get_num_threads(), xs.tolist(), ys.tolist()))
        return len(xs)

    x, y = torch.arange(5), torch.arange(5) * 10
    with halved_threads() as each:
        assert each == 1 and torch.get_num_threads() == 1
        assert in_halves(part, x, y) == (3, 2)  # an odd batch: the first half takes the extra image
    assert torch.get_num_threads() == 2  # given back
    assert len({ident for ident, *_ in seen}) == 2 and all(threads == 1 for _, threads, *_ in seen)
    assert sorted(xs for *_, xs, _ in seen) == [[0, 1, 2], [3, 4]]
    assert sorted(ys for *_, ys in seen) == [[0, 10, 20], [30, 40]]
    with halved_threads():
        assert in_halves(lambda xs, ys: len(xs), x[:1], y[:1]) == (1, None)  # one image: not split


def slow_second_half(done):
    def part(xs, ys):
        if xs[0] == 0:
            raise ValueError("first half")
        time.sleep(0.3)  # long after the first half has failed
        done.append(True)
    return part


def test_in_halves_waits_for_the_other_half_when_one_fails(two_threads):
    done = []
    with halved_threads(), pytest.raises(ValueError, match="first half"):
        in_halves(slow_second_half(done), torch.arange(4), torch.arange(4))
    assert done == [True]  # the second half had finished before the error came out
    assert torch.get_num_threads() == 2  # and the threads were given back


def test_a_ctrl_c_while_waiting_still_waits_for_the_other_half(two_threads, monkeypatch):
    done, calls = [], []
    wait = concurrent.futures.wait

    def interrupted_once(futures, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return wait(futures, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "wait", interrupted_once)

    def part(xs, ys):
        if xs[0] != 0:  # the second half
            time.sleep(0.3)
            done.append(True)

    with halved_threads(), pytest.raises(KeyboardInterrupt):
        in_halves(part, torch.arange(4), torch.arange(4))
    assert done == [True]  # the second half ran to the end before the Ctrl-C came out
    assert len(calls) == 2


def test_outside_halved_threads_in_halves_holds_them_for_the_call(two_threads):
    seen = []

    def part(xs, ys):
        seen.append(torch.get_num_threads())
        return int(xs.sum())

    assert in_halves(part, torch.arange(4), torch.arange(4)) == (1, 5)
    assert seen == [1, 1] and torch.get_num_threads() == 2


def _learner_steps(speed, x, y, steps=3):
    """``steps`` SGD steps of a d2l LeNet on one batch under ``speed``; the weights."""
    from lenet.model.network import LeNet
    from lenet.training.learners import Learner

    cfg = build_config("d2l", overrides=["optim.label_smoothing=0.1"])
    torch.manual_seed(0)
    learner = Learner(LeNet(cfg.model), cfg, 10, speed)
    x = x.contiguous(memory_format=torch.channels_last)
    with learner.held():
        for step in range(steps):
            loss, logits = learner.step(x, y, step)
    return loss, logits, {k: v.clone() for k, v in learner.raw.state_dict().items()}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_halves_at_once_are_the_halves_one_after_the_other_bit_for_bit(two_threads, fused, precision):
    """Both halves of each batch at once on two threads (halves.py) update the weights
    exactly as the same two parts computed one after the other on one thread: which half
    finishes first changes no bit, run after run."""
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    at_once = [_learner_steps(Speed(precision, True, fused_layers=fused, parallel_halves=True), x, y)
               for _ in range(3)]
    torch.set_num_threads(1)  # what each half has
    in_turn = _learner_steps(Speed(precision, True, micro_batch=128, fused_layers=fused), x, y)
    torch.set_num_threads(2)
    for loss, logits, weights in at_once:
        assert torch.equal(loss, in_turn[0]) and torch.equal(logits, in_turn[1])
        for key, value in in_turn[2].items():
            assert torch.equal(weights[key], value), key
    assert torch.get_num_threads() == 2  # the step gave its threads back


def test_halves_sum_to_the_whole_batchs_gradient(two_threads):
    """Up to float rounding the halves' update is the whole batch's; odd batches split
    unevenly (151 + 150) and a batch of one image is not split."""
    x, y = torch.randn(301, 1, 28, 28), torch.randint(0, 10, (301,))
    whole = _learner_steps(Speed("fp32", True), x, y, steps=1)
    halves = _learner_steps(Speed("fp32", True, parallel_halves=True), x, y, steps=1)
    assert halves[1].shape == (301, 10) and torch.allclose(halves[1], whole[1], atol=1e-6)
    assert halves[0].item() == pytest.approx(whole[0].item(), rel=1e-6)
    for key, value in whole[2].items():
        assert torch.allclose(halves[2][key], value, rtol=1e-4, atol=1e-6), key
    assert any(not torch.equal(halves[2][k], v) for k, v in whole[2].items())  # it did take the other path
    one = _learner_steps(Speed("fp32", True, parallel_halves=True), x[:1], y[:1], steps=1)
    assert one[1].shape == (1, 10)
