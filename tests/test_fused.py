"""The fused layers (fused.py): the same function and gradients as the model's own
layers, used where the architecture allows, recorded, and resumed bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lenet.speed.fused import FewChannelConv, FlatLinear, PhaseBlock, fused_forward, phase_index
from lenet.model.network import create_model
from lenet.configuration.build import build_config
from lenet.speed.config import SpeedConfig
from lenet.speed.policy import resolve_speed
from lenet.training.run import resume, train

from conftest import StoppedAfterEpoch2, stop_after_epoch_2

CL = torch.channels_last


def _outputs_and_grads(module, params, x):
    out = module(x)
    return out, torch.autograd.grad(out.square().sum(), params)


@pytest.mark.parametrize("name, overrides", [
    ("lenet5", {}),  # the d2l network: 1 -> 6 channels, 5x5, padding 2, sigmoid, 2x2 average pools
    ("lenet5", {"in_channels": 3, "input_size": 32}),
    ("lenet5", {"kernel_size": [3, 5], "padding": [1, 0]}),
    ("lenet5", {"kernel_size": [4, 3], "padding": [1, 0]}),  # an even kernel needs one more row of blocks
    ("lenet5", {"activation": "relu", "conv_bias": [False, True]}),
])
def test_the_first_block_by_phases_is_the_same_function(name, overrides):
    torch.manual_seed(0)
    model = create_model(name, **overrides).to(memory_format=CL)
    fused = fused_forward(model)
    assert isinstance(fused.features[0], PhaseBlock) and isinstance(fused.classifier[0], FlatLinear)
    assert isinstance(fused.features[1], FewChannelConv)  # conv2: 6 (or 3) input channels
    c = model.config
    x = torch.randn(16, c.in_channels, c.input_size, c.input_size).contiguous(memory_format=CL)
    params = list(model.parameters())
    (want, want_grads), (got, got_grads) = (_outputs_and_grads(m, params, x) for m in (model, fused))
    assert torch.allclose(got, want, atol=1e-5)
    for g_want, g_got in zip(want_grads, got_grads):
        assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-6 * g_want.abs().max().item())
    assert not torch.equal(got, want) or any(not torch.equal(a, b) for a, b in zip(want_grads, got_grads)), \
        "the same bits: the fused path was not taken"


def test_phase_weights_put_each_tap_once_per_phase_and_zeros_elsewhere():
    out_ch, in_ch, k = 6, 2, 5
    weight = torch.arange(1, out_ch * in_ch * k * k + 1, dtype=torch.float32).view(out_ch, in_ch, k, k)
    phased = torch.cat([weight.reshape(-1), torch.zeros(1)])[phase_index(out_ch, in_ch, k)]
    assert phased.shape == (4 * out_ch, 4 * in_ch, 3, 3)
    for phase in range(4):  # each output phase of each channel sees the kernel's 25 taps, once each
        block = phased[phase * out_ch:(phase + 1) * out_ch]
        for co in range(out_ch):
            taps = block[co][block[co] != 0]
            assert sorted(taps.tolist()) == sorted(weight[co].flatten().tolist())


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.uint8])
def test_space_to_depth_moves_each_pixel_to_its_phase_channel(channels, dtype):
    from lenet.speed.fused import _space_to_depth

    image = (torch.arange(2 * channels * 6 * 8) % 251).to(dtype).view(2, channels, 6, 8)
    blocks = _space_to_depth(image)
    assert blocks.shape == (2, 4 * channels, 3, 4) and blocks.is_contiguous(memory_format=CL)
    for ri in range(2):
        for si in range(2):
            for c in range(channels):
                assert torch.equal(blocks[:, (ri * 2 + si) * channels + c], image[:, c, ri::2, si::2])


@pytest.mark.parametrize("name, overrides", [
    ("lenet5", {"pool": "max"}), ("lenet5-bn", {}), ("lenet5", {"pool_size": 3}), ("lenet5", {"pool": "none"})])
def test_other_first_blocks_keep_their_layers(name, overrides):
    torch.manual_seed(0)
    model = create_model(name, **overrides).to(memory_format=CL).eval()
    fused = fused_forward(model)
    assert not isinstance(fused.features[0], PhaseBlock)
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=CL)
    assert torch.allclose(fused(x), model(x), atol=1e-5)  # the flatten is still rewritten


def test_an_odd_sized_input_takes_the_plain_block():
    torch.manual_seed(0)
    model = create_model("lenet5", input_size=27).to(memory_format=CL)  # conv1 -> 27x27: the pool drops a row
    x = torch.randn(4, 1, 27, 27).contiguous(memory_format=CL)
    assert torch.allclose(fused_forward(model)(x), model(x), atol=1e-6)


def test_bf16_autocast_stays_within_bf16_rounding():
    torch.manual_seed(0)
    model = create_model("lenet5").to(memory_format=CL)
    x = torch.randn(32, 1, 28, 28).contiguous(memory_format=CL)
    with torch.no_grad():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused, plain = fused_forward(model)(x).float(), model(x).float()
    assert (fused - exact).abs().max() < 4 * (plain - exact).abs().max() + 1e-3


def test_bf16_gradients_come_back_in_float32_and_near_the_plain_path():
    torch.manual_seed(0)
    model = create_model("lenet5").to(memory_format=CL)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    params = list(model.parameters())
    grads = {}
    for name, forward in (("exact", model), ("plain", model), ("fused", fused_forward(model))):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "exact"):
            logits = forward(x)
        grads[name] = torch.autograd.grad(F.cross_entropy(logits.float(), y), params)
    for p, exact, plain, fused in zip(params, grads["exact"], grads["plain"], grads["fused"]):
        assert fused.dtype == p.dtype == torch.float32
        assert (fused - exact).norm() < 3 * (plain - exact).norm() + 1e-6 * exact.norm()


def test_the_speed_choice_turns_them_on_for_channels_last_cpu_runs_only():
    cpu = torch.device("cpu")

    def fused(device=cpu, recorded=None, **speed) -> bool:
        return resolve_speed(SpeedConfig(**speed), device, batch_size=256, recorded=recorded).fused_layers

    assert fused() is True
    assert fused(channels_last=False) is False
    assert fused(compile=True) is False  # compile fuses its own way
    assert fused(fused_layers=False) is False
    assert fused(torch.device("meta")) is False  # not a CPU
    old = {"precision": "fp32", "channels_last": True, "reason": "auto"}  # a checkpoint from before them
    assert fused(recorded=old) is False
    assert fused(recorded=old | {"fused_layers": True}) is True


def _d2l(data_dir, name, *overrides):
    """The d2l recipe on the tiny data, whole batches (micro-batches have their own test)."""
    return build_config("d2l", overrides=[f"data.data_dir={data_dir}", f"name={name}", "out=runs", "train.epochs=3",
                                          "device=cpu", "speed.micro_batch=0", *overrides])


def test_a_run_with_fused_layers_records_them_and_resumes_exactly(tiny_data_dir):
    full = train(_d2l(tiny_data_dir, "full"), out="runs")
    assert json.loads((full.run_dir / "environment.json").read_text())["speed"]["fused_layers"] is True
    assert "fused layers" in (full.run_dir / "train.log").read_text()
    with pytest.raises(StoppedAfterEpoch2):
        train(_d2l(tiny_data_dir, "part"), out="runs", on_epoch=stop_after_epoch_2)
    resumed = resume(tiny_data_dir.parent / "runs" / "part")
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    plain = train(_d2l(tiny_data_dir, "plain", "speed.fused_layers=false"), out="runs")
    assert json.loads((plain.run_dir / "environment.json").read_text())["speed"]["fused_layers"] is False
    # The same training up to float rounding: the two runs' losses agree closely.
    for a, b in zip(full.history, plain.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


def test_deterministic_runs_take_them_and_repeat_bit_for_bit(tiny_data_dir, monkeypatch):
    enabled = torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # train sets it; monkeypatch unsets it
    try:
        a, b = (train(_d2l(tiny_data_dir, name, "train.deterministic=true"), out="runs") for name in ("a", "b"))
    finally:
        torch.use_deterministic_algorithms(enabled)
    assert json.loads((a.run_dir / "environment.json").read_text())["speed"]["fused_layers"] is True
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_the_learner_steps_through_the_fused_layers_when_chosen():
    from lenet.speed.fused import FusedLeNet
    from lenet.speed.choice import Speed
    from lenet.training.learners import Learner

    cfg = build_config("d2l")
    fused = Learner(create_model("lenet5"), cfg, 10, Speed("fp32", True, fused_layers=True))
    plain = Learner(create_model("lenet5"), cfg, 10, Speed("fp32", True))
    assert isinstance(fused.forward, FusedLeNet) and fused.forward.model is fused.raw
    assert plain.forward is plain.raw


def test_the_fused_step_matches_the_plain_step():
    """One d2l step's gradients by both paths, through F.cross_entropy."""
    torch.manual_seed(0)
    model = create_model("lenet5").to(memory_format=CL)
    x = torch.randn(256, 1, 28, 28)  # as the loop hands it over: NCHW strides, one channel
    y = torch.randint(0, 10, (256,))
    params = list(model.parameters())
    grads = [torch.autograd.grad(F.cross_entropy(m(x), y), params) for m in (model, fused_forward(model))]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
