"""Nesting schedules and validation of nesting lists / loss weights (mrl.core.nesting)."""

import math

import pytest

from mrl.core.nesting import NestingError, log_sizes, uniform_sizes, validate_sizes, validate_weights

# ---------------------------------------------------------------- log_sizes

@pytest.mark.parametrize("dim, min_size, expected", [
    (512, 8, [8, 16, 32, 64, 128, 256, 512]),
    (2048, 8, [8, 16, 32, 64, 128, 256, 512, 1024, 2048]),
    (100, 8, [8, 16, 32, 64, 100]),          # d not a power of two: still last
    (64, 5, [8, 16, 32, 64]),                # min_size rounded up to a power of two
    (64, 16, [16, 32, 64]),
    (8, 8, [8]),
    (4, 1, [1, 2, 4]),
    (1, 1, [1]),
    (12, 9, [12]),                           # 16 > 12: only d itself
])
def test_log_sizes(dim, min_size, expected):
    assert log_sizes(dim, min_size=min_size) == expected


def test_log_sizes_default_min_size_is_8():
    assert log_sizes(32) == [8, 16, 32]


@pytest.mark.parametrize("dim, min_size, match", [
    (0, 1, r"dim must be >= 1, got 0"),
    (-4, 1, r"dim must be >= 1"),
    (64, 0, r"min_size must be in \[1, dim=64\], got 0"),
    (64, 65, r"min_size must be in \[1, dim=64\], got 65"),
])
def test_log_sizes_rejects(dim, min_size, match):
    with pytest.raises(NestingError, match=match):
        log_sizes(dim, min_size)


def test_nesting_error_is_a_value_error():
    assert issubclass(NestingError, ValueError)


# ---------------------------------------------------------------- uniform_sizes

@pytest.mark.parametrize("dim, min_size, count, expected", [
    (64, 8, 4, [8, 27, 45, 64]),             # 8 + i*56/3 = 8, 26.67, 45.33, 64
    (512, 8, 8, [8, 80, 152, 224, 296, 368, 440, 512]),   # step 72 exactly
    (10, 1, 10, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),         # count == every size
    (16, 16, 1, [16]),
    (9, 1, 2, [1, 9]),
])
def test_uniform_sizes(dim, min_size, count, expected):
    assert uniform_sizes(dim, min_size=min_size, count=count) == expected


def test_uniform_sizes_are_sorted_distinct_and_span_the_range():
    for dim in (17, 64, 100):
        for count in range(2, dim - 3 + 2):
            sizes = uniform_sizes(dim, min_size=3, count=count)
            assert len(sizes) == count
            assert sizes == sorted(set(sizes))
            assert sizes[0] == 3 and sizes[-1] == dim


@pytest.mark.parametrize("dim, min_size, count, match", [
    (64, 0, 4, r"min_size must be in \[1, dim=64\], got 0"),
    (64, 65, 4, r"min_size must be in \[1, dim=64\], got 65"),
    (64, 8, 0, r"count must be >= 2 .*got 0"),
    (64, 8, 1, r"count must be >= 2 \(or 1 when min_size == dim\), got 1"),
    (10, 8, 4, r"count=4 is more than the 3 sizes in \[8, 10\]"),
])
def test_uniform_sizes_rejects(dim, min_size, count, match):
    with pytest.raises(NestingError, match=match):
        uniform_sizes(dim, min_size, count)


# ---------------------------------------------------------------- validate_sizes

def test_validate_sizes_accepts_and_returns_a_list():
    out = validate_sizes((8, 16, 64), dim=64)
    assert out == [8, 16, 64] and isinstance(out, list)
    assert validate_sizes([1], dim=1) == [1]
    assert validate_sizes([3, 7], dim=10) == [3, 7]  # need not end at d


@pytest.mark.parametrize("sizes, dim, match", [
    ([], 64, r"nesting list is empty"),
    ([16, 8, 32], 64, r"nesting list \[16, 8, 32\] is not sorted in increasing order"),
    ([8, 16, 16, 32], 64, r"duplicate sizes \[16\]"),
    ([8, 8, 32, 32], 64, r"duplicate sizes \[8, 32\]"),
    ([8, 128], 64, r"nesting size #1 is 128, outside the accepted range \[1, dim=64\]"),
    ([0, 8], 64, r"nesting size #0 is 0, outside the accepted range \[1, dim=64\]"),
    ([-8, 8], 64, r"nesting size #0 is -8, outside"),
    ([8, 16.0], 64, r"nesting size #1 is 16\.0, not an integer"),
    ([8, "16"], 64, r"nesting size #1 is '16', not an integer"),
    ([True, 8], 64, r"nesting size #0 is True, not an integer"),
])
def test_validate_sizes_rejects(sizes, dim, match):
    with pytest.raises(NestingError, match=match):
        validate_sizes(sizes, dim)


# ---------------------------------------------------------------- validate_weights

def test_validate_weights_default_is_all_ones():
    assert validate_weights(None, [8, 16, 32]) == [1.0, 1.0, 1.0]


def test_validate_weights_converts_to_floats():
    out = validate_weights((2, 0, 0.5), [8, 16, 32])
    assert out == [2.0, 0.0, 0.5]
    assert all(type(w) is float for w in out)


@pytest.mark.parametrize("weights, match", [
    ([1.0, 1.0], r"2 loss weights given for 3 nesting sizes \[8, 16, 32\]; give one per size"),
    ([1.0, 1.0, 1.0, 1.0], r"4 loss weights given for 3 nesting sizes"),
    ([1.0, -0.5, 1.0], r"loss weight #1 \(size 16\) is -0\.5; weights must be finite and >= 0"),
    ([1.0, 1.0, float("nan")], r"loss weight #2 \(size 32\) is nan; weights must be finite"),
    ([float("inf"), 1.0, 1.0], r"loss weight #0 \(size 8\) is inf"),
    ([1.0, "2", 1.0], r"loss weight #1 \(size 16\) is '2'"),
    ([True, 1.0, 1.0], r"loss weight #0 \(size 8\) is True"),
    ([0, 0.0, 0], r"all loss weights are 0; at least one size must be trained"),
])
def test_validate_weights_rejects(weights, match):
    with pytest.raises(NestingError, match=match):
        validate_weights(weights, [8, 16, 32])


def test_validate_weights_nan_is_not_silently_kept():
    # a NaN would poison the total loss; it must never come back
    with pytest.raises(NestingError):
        validate_weights([math.nan], [8])
