"""The int8 integer arithmetic (lenet.use.integer): rounding, saturation, pooling, bounds."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from lenet.errors import ConfigError
from lenet.use.integer import (INT8, INT32, MAX_TERMS, Affine, Flatten, Pool, divide_rounded, fixed_point, forward,
                               requantize, round_shift, trace_shapes)


def exact(x: int, denominator: int) -> int:
    return round(Fraction(x, denominator))  # Python rounds a Fraction half to even


def test_round_shift_is_half_to_even_on_ties_and_exact_elsewhere():
    ties = {3: 2, 5: 2, 7: 4, 1: 0, -1: 0, -3: -2, -5: -2, -7: -4}  # (odd / 2) -> the even neighbour
    for odd, expected in ties.items():
        for shift in (1, 5, 40):
            x = torch.tensor([odd << (shift - 1)], dtype=torch.int64)
            assert int(round_shift(x, torch.tensor(shift))) == expected, (odd, shift)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**62), 2**62, (2000,), generator=generator)
    shifts = torch.randint(1, 63, (2000,), generator=generator)
    got = round_shift(x, shifts)
    assert got.tolist() == [exact(int(a), 2 ** int(s)) for a, s in zip(x, shifts)]


def test_divide_rounded_matches_exact_division_for_every_pool_size():
    totals = torch.arange(-700, 701)
    for count in (1, 2, 4, 9, 16, 25):
        assert divide_rounded(totals, count).tolist() == [exact(int(t), count) for t in totals]


def test_requantize_saturates_int8_and_int32_and_scales_per_channel():
    acc = torch.tensor([[2**31 - 1, -(2**31), 1000, -1000]])
    multiplier, shift = torch.tensor([2**30] * 4), torch.tensor([30, 30, 31, 31])  # x1, x1, x0.5, x0.5
    assert requantize(acc, multiplier, shift, 3, INT8).tolist() == [[127, -128, 127, -128]]
    assert requantize(acc, multiplier, shift, 0, INT32).tolist() == [[2**31 - 1, -(2**31), 500, -500]]
    ties = torch.tensor([[96, 160, -96, -160]])  # / 64: 1.5, 2.5, -1.5, -2.5 -> 2, 2, -2, -2
    assert requantize(ties, multiplier, torch.tensor([36] * 4), -5, INT8).tolist() == [[-3, -3, -7, -7]]


@pytest.mark.parametrize("real", [1.0, 0.999999, 0.5, 2.0**-31, 3e-12, 1e-3, 0.0123456, 7.5, 1234.5])
def test_fixed_point_approximates_the_scale(real):
    multiplier, shift = fixed_point(real)
    assert 1 <= shift <= 62 and 0 <= multiplier < 2**31
    if real >= 2**-31:
        assert 2**30 <= multiplier
        assert abs(multiplier / 2**shift - real) <= real * 2**-30
    else:
        assert abs(multiplier / 2**shift - real) <= 2**-62


def test_fixed_point_refuses_what_no_multiplier_can_be():
    assert fixed_point(0.0) == (0, 62)
    for bad in (float("nan"), float("inf"), -1.0, 2.0**31):
        with pytest.raises(ConfigError, match="fixed-point"):
            fixed_point(bad)


def _conv(weight: torch.Tensor, padding: int, input_zero: int = 0, output_zero: int = 0) -> Affine:
    channels = len(weight)
    return Affine("conv", "conv1", weight.to(torch.int8), torch.zeros(channels, dtype=torch.int32),
                  torch.full((channels,), 2**30, dtype=torch.int32), torch.full((channels,), 30, dtype=torch.int32),
                  input_zero, output_zero, padding)


def test_padding_reads_the_input_zero_point_a_real_zero():
    # A 3x3 all-ones kernel over a constant image at its zero point sums nothing, borders too.
    layer = _conv(torch.ones(1, 1, 3, 3), padding=1, input_zero=-7)
    x = torch.full((1, 1, 4, 4), -7, dtype=torch.int64)
    assert forward([layer], x).eq(0).all()
    x[0, 0, 0, 0] = -6  # one step above zero at the corner reaches the 4 outputs around it
    assert forward([layer], x)[0, 0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_max_pool_never_lets_padding_win_and_avg_pool_counts_it_as_zero():
    x = torch.full((1, 1, 2, 2), -128, dtype=torch.int64)
    pooled = forward([Pool("pool1", "max", 2, 2, 1, zero=0)], x)
    assert pooled.eq(-128).all()  # padding is "nothing", not 0 or the zero point
    x = torch.tensor([[[[10, 10], [10, 16]]]])  # zero point 2: centred 8, 8, 8, 14
    assert forward([Pool("pool1", "avg", 2, 2, 0, zero=2)], x).item() == 12  # 38/4 = 9.5 -> 10, + 2
    assert forward([Pool("pool1", "avg", 2, 2, 1, zero=2)], x)[0, 0].tolist() == [[4, 4], [4, 6]]  # 2, 2, 2, 3.5 -> 4


def test_trace_shapes_refuses_sums_an_int32_cannot_hold():
    wide = MAX_TERMS + 1
    dense = Affine("dense", "fc1", torch.zeros(2, wide, dtype=torch.int8), torch.zeros(2, dtype=torch.int32),
                   torch.zeros(2, dtype=torch.int32), torch.ones(2, dtype=torch.int32), 0, 0, scores=True)
    with pytest.raises(ConfigError, match=f"fc1 sums {wide:,} products"):
        trace_shapes([Flatten(), dense], (1, 1, wide))
    dense.weight = dense.weight[:, :MAX_TERMS]
    assert trace_shapes([Flatten(), dense], (1, 1, MAX_TERMS)) == [(MAX_TERMS,), (2,)]
