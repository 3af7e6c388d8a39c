"""Adaptive classification cascade (mrl.core.adaptive), against hand-computed values."""

import numpy as np
import pytest

from mrl.core.adaptive import adaptive_curve, cascade, expected_size, search_thresholds, softmax

# --- softmax ---------------------------------------------------------------------------------------------------


def test_softmax_matches_hand_computation_and_rows_sum_to_one():
    logits = np.array([[0.0, np.log(2.0), np.log(3.0)],  # exp -> 1, 2, 3 -> /6
                       [1.0, 1.0, 1.0],
                       [1000.0, 1000.0, -np.inf]])  # large logits must not overflow
    p = softmax(logits)
    np.testing.assert_allclose(p[0], [1 / 6, 2 / 6, 3 / 6], rtol=1e-12)
    np.testing.assert_allclose(p[1], [1 / 3, 1 / 3, 1 / 3], rtol=1e-12)
    np.testing.assert_allclose(p[2], [0.5, 0.5, 0.0], rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)


def test_softmax_random_rows_sum_to_one_and_are_shift_invariant():
    logits = np.random.default_rng(0).normal(size=(7, 5)) * 10
    p = softmax(logits)
    assert p.shape == (7, 5)
    assert np.all(p > 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(softmax(logits + 123.0), p, rtol=1e-9)
    # order is preserved row-wise
    np.testing.assert_array_equal(p.argmax(axis=1), logits.argmax(axis=1))


# --- cascade ---------------------------------------------------------------------------------------------------

# 3 sizes, 4 rows, 2 classes. Per size: max prob / argmax per row.
P0 = np.array([[0.90, 0.10],   # max .90 -> 0
               [0.60, 0.40],   # max .60 -> 0
               [0.30, 0.70],   # max .70 -> 1
               [0.55, 0.45]])  # max .55 -> 0
P1 = np.array([[0.20, 0.80],   # max .80 -> 1
               [0.10, 0.90],   # max .90 -> 1
               [0.80, 0.20],   # max .80 -> 0
               [0.60, 0.40]])  # max .60 -> 0
P2 = np.array([[0.30, 0.70],   # -> 1
               [0.70, 0.30],   # -> 0
               [0.40, 0.60],   # -> 1
               [0.45, 0.55]])  # -> 1
PROBS = [P0, P1, P2]


def test_cascade_hand_computed():
    # row 0: .90 >= .7 at size 0 -> pred 0
    # row 1: .60 < .7; size 1 .90 >= .8 -> pred 1
    # row 2: .70 == .7 (equal stops) at size 0 -> pred 1
    # row 3: .55 < .7; .60 < .8 -> last size -> pred 1
    pred, stop = cascade(PROBS, [0.7, 0.8, 0.99])
    np.testing.assert_array_equal(stop, [0, 1, 0, 2])
    np.testing.assert_array_equal(pred, [0, 1, 1, 1])


def test_cascade_threshold_exactly_equal_stops():
    pred, stop = cascade(PROBS, [0.9, 0.9, 0.9])
    # row 0: .90 == .9 stops at 0; row 1: .60 < .9, .90 == .9 stops at 1; rows 2, 3 reach the last size
    np.testing.assert_array_equal(stop, [0, 1, 2, 2])
    np.testing.assert_array_equal(pred, [0, 1, 1, 1])


def test_cascade_last_size_always_stops():
    # unreachable thresholds everywhere, including the last size: every row stops at the last size
    pred, stop = cascade(PROBS, [1.5, 1.5, 1.5])
    np.testing.assert_array_equal(stop, [2, 2, 2, 2])
    np.testing.assert_array_equal(pred, [1, 0, 1, 1])


def test_cascade_zero_thresholds_stop_at_the_first_size():
    pred, stop = cascade(PROBS, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(stop, [0, 0, 0, 0])
    np.testing.assert_array_equal(pred, [0, 0, 1, 0])


def test_cascade_middle_size_only():
    pred, stop = cascade(PROBS, [1.5, 0.0, 1.5])
    np.testing.assert_array_equal(stop, [1, 1, 1, 1])
    np.testing.assert_array_equal(pred, [1, 1, 0, 0])


@pytest.mark.parametrize("thresholds", [[0.5, 0.5], [0.5, 0.5, 0.5, 0.5], []])
def test_cascade_wrong_number_of_thresholds(thresholds):
    with pytest.raises(ValueError):
        cascade(PROBS, thresholds)


# --- expected_size ---------------------------------------------------------------------------------------------


def test_expected_size_is_mean_size_at_stop():
    assert expected_size(np.array([0, 1, 0, 2]), [8, 32, 128]) == pytest.approx((8 + 32 + 8 + 128) / 4)
    assert expected_size(np.array([2, 2, 2]), [8, 32, 128]) == 128.0
    assert expected_size(np.array([0]), [8, 32, 128]) == 8.0
    assert isinstance(expected_size(np.array([0, 1]), [8, 32]), float)


def test_expected_size_from_cascade():
    _, stop = cascade(PROBS, [0.7, 0.8, 0.99])
    assert expected_size(stop, [4, 16, 64]) == pytest.approx((4 + 16 + 4 + 64) / 4)


# --- search_thresholds -----------------------------------------------------------------------------------------


def _two_size_case():
    """10 rows, label 0 everywhere; the large size is always right (acc 1.0).

    Small size: rows 0-5 right with max prob .95, rows 6-7 wrong with .75, rows 8-9 wrong with .85.
    """
    small = np.array([[0.95, 0.05]] * 6 + [[0.25, 0.75]] * 2 + [[0.15, 0.85]] * 2)
    large = np.array([[0.6, 0.4]] * 10)
    return [small, large], np.zeros(10, dtype=int)


GRID = [0.6, 0.7, 0.8, 0.9, 0.96]


@pytest.mark.parametrize("max_drop, expected", [
    # target 1.0: .6/.7 stop all rows at small (acc .6), .8 lets rows 6-7 on (acc .8), .9 lets 8-9 on too (acc 1.0)
    (0.0, 0.9),
    (0.1, 0.9),   # target .9: .8 gives .8 < .9
    (0.25, 0.8),  # target .75: .8 gives .8
    (0.5, 0.6),   # target .5: .6 gives .6
])
def test_search_thresholds_two_sizes_hand_computed(max_drop, expected):
    probs, labels = _two_size_case()
    thresholds = search_thresholds(probs, labels, max_drop=max_drop, grid=GRID)
    assert thresholds == [expected, 1.0]


def test_search_thresholds_grid_order_does_not_matter():
    probs, labels = _two_size_case()
    assert search_thresholds(probs, labels, 0.0, grid=GRID[::-1]) == [0.9, 1.0]


def test_search_thresholds_no_grid_value_suffices_sends_everything_on():
    probs, labels = _two_size_case()
    thresholds = search_thresholds(probs, labels, 0.0, grid=[0.6, 0.7])
    assert len(thresholds) == 2 and thresholds[-1] == 1.0
    assert thresholds[0] > 1.0  # never stops at the small size
    _, stop = cascade(probs, thresholds)
    np.testing.assert_array_equal(stop, np.ones(10))


def test_search_thresholds_three_sizes_greedy_hand_computed():
    # label 0 everywhere; the largest size is always right
    small = np.array([[0.95, 0.05], [0.95, 0.05], [0.25, 0.75], [0.25, 0.75]])  # right .95, right .95, wrong .75 x2
    mid = np.array([[0.60, 0.40], [0.60, 0.40], [0.85, 0.15], [0.35, 0.65]])  # row 2 right .85, row 3 wrong .65
    large = np.array([[0.9, 0.1]] * 4)
    labels = np.zeros(4, dtype=int)
    grid = [0.6, 0.7, 0.8, 0.9, 0.99]
    # drop 0 (target 1.0): size 0 -> .8 (rows 2, 3 move on); size 1 -> .6 gives .75 (row 3 stops wrong), .7 gives 1.0
    assert search_thresholds([small, mid, large], labels, 0.0, grid=grid) == [0.8, 0.7, 1.0]
    # drop .25 (target .75): size 0 -> .8 (.6/.7 give .5); size 1 -> .6 (gives exactly .75)
    assert search_thresholds([small, mid, large], labels, 0.25, grid=grid) == [0.8, 0.6, 1.0]


def test_search_thresholds_default_grid():
    # default grid .50, .51, ... .99, .995, ...: the lowest value above the wrong rows' .853 is .86
    small = np.array([[0.95, 0.05]] * 6 + [[0.147, 0.853]] * 4)
    large = np.array([[0.6, 0.4]] * 10)
    thresholds = search_thresholds([small, large], np.zeros(10, dtype=int), 0.0)
    assert thresholds[0] == pytest.approx(0.86)
    assert thresholds[-1] == 1.0


def _random_probs(seed, n=300, classes=5, sizes=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    probs = []
    for i in range(sizes):
        signal = 0.5 + 1.0 * i  # larger sizes are more accurate
        logits = rng.normal(size=(n, classes)) * rng.uniform(0.5, 3.0, size=(n, 1))
        logits[np.arange(n), labels] += signal * rng.uniform(0, 2, size=n)
        probs.append(softmax(logits))
    return probs, labels


@pytest.mark.parametrize("seed", range(5))
def test_search_thresholds_max_drop_zero_never_below_largest_size(seed):
    probs, labels = _random_probs(seed)
    largest = (probs[-1].argmax(axis=1) == labels).mean()
    thresholds = search_thresholds(probs, labels, 0.0)
    pred, stop = cascade(probs, thresholds)
    assert (pred == labels).mean() >= largest
    # sanity: the case is non-trivial (some rows stop early)
    assert (stop < len(probs) - 1).any()


@pytest.mark.parametrize("seed", range(5))
def test_search_thresholds_accuracy_target_and_first_threshold_monotonic(seed):
    """Guaranteed by the greedy search: accuracy >= largest - drop, and the first size's threshold only falls."""
    probs, labels = _random_probs(seed)
    largest = (probs[-1].argmax(axis=1) == labels).mean()
    firsts = []
    for drop in [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]:
        thresholds = search_thresholds(probs, labels, drop)
        pred, _ = cascade(probs, thresholds)
        assert (pred == labels).mean() >= largest - drop - 1e-12
        firsts.append(thresholds[0])
    assert firsts == sorted(firsts, reverse=True)
    assert firsts[0] > firsts[-1]


def _hand_made_greedy_trap():
    """Label 0 everywhere, sizes [1, 10, 100], grid [.6, .7, .8, .9].

    small: all wrong, max .65 / .55 / .65;  mid: right .75 / wrong .95 / right .95;  large: all right.
    drop .34 (target .66): t0 = .7 (.6 stops rows 0, 2 wrong -> 1/3), t1 = .6 (all stop at mid, 2/3) -> size 10.
    drop .67 (target .33): t0 = .6 (1/3), then row 1 stops wrong at mid for every t1 -> never -> size 34.
    """
    probs = [np.array([[0.35, 0.65], [0.45, 0.55], [0.35, 0.65]]),
             np.array([[0.75, 0.25], [0.05, 0.95], [0.95, 0.05]]),
             np.array([[0.85, 0.15], [0.95, 0.05], [0.55, 0.45]])]
    return probs, np.zeros(3, dtype=int), [0.6, 0.7, 0.8, 0.9], [1, 10, 100]


def test_search_thresholds_is_greedy_and_a_looser_target_can_cost_more():
    """Documented behaviour of the greedy search (the reason adaptive_curve keeps the cheapest so far)."""
    probs, labels, grid, sizes = _hand_made_greedy_trap()
    t_mid = search_thresholds(probs, labels, 0.34, grid=grid)
    t_loose = search_thresholds(probs, labels, 0.67, grid=grid)
    assert t_mid == [0.7, 0.6, 1.0]
    assert expected_size(cascade(probs, t_mid)[1], sizes) == pytest.approx(10.0)
    assert expected_size(cascade(probs, t_loose)[1], sizes) == pytest.approx(34.0)


def test_adaptive_curve_keeps_the_cheaper_stricter_thresholds():
    probs, labels, grid, sizes = _hand_made_greedy_trap()
    points = adaptive_curve(probs, labels, probs, labels, sizes, drops=(0.67, 0.34), grid=grid)
    assert [p["max_drop"] for p in points] == [0.34, 0.67]
    assert points[1]["thresholds"] == [0.7, 0.6, 1.0]  # the drop-.34 thresholds also meet the .67 target
    assert [p["val_expected_size"] for p in points] == pytest.approx([10.0, 10.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adaptive_curve_held_out_cost_never_rises_with_the_drop(seed):
    probs, labels = _random_probs(seed)
    sizes = [8, 16, 32, 64]
    points = adaptive_curve(probs, labels, probs, labels, sizes,
                            drops=(0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4))
    seen = [p["val_expected_size"] for p in points]
    assert seen[0] > seen[-1]  # the sweep actually moves
    assert all(b <= a for a, b in zip(seen, seen[1:])), seen
    largest = (probs[-1].argmax(axis=1) == labels).mean()
    for p in points:
        assert p["val_accuracy"] >= largest - p["max_drop"] - 1e-12


# --- adaptive_curve --------------------------------------------------------------------------------------------


def test_adaptive_curve_uses_val_thresholds():
    """Val: small size right at .9 (6 rows), wrong at .7 (4 rows). Test: small size wrong at .9, right at .7.

    The large size is always right on both splits. Searching on val (default grid) gives .71 for drop 0 and .5 for
    drop .5; searching on test would give .91 for both (accuracy 1.0, expected size 64).
    """
    sizes = [8, 64]
    small = np.array([[0.9, 0.1]] * 6 + [[0.3, 0.7]] * 4)  # argmax 0 at .9, argmax 1 at .7
    val_labels = np.array([0] * 6 + [0] * 4)
    test_labels = np.array([1] * 6 + [1] * 4)
    val_large = np.array([[0.8, 0.2]] * 10)
    test_large = np.array([[0.2, 0.8]] * 10)
    val_probs, test_probs = [small, val_large], [small.copy(), test_large]

    points = adaptive_curve(val_probs, val_labels, test_probs, test_labels, sizes, drops=(0.0, 0.5))
    assert len(points) == 2
    assert [p["max_drop"] for p in points] == [0.0, 0.5]
    assert set(points[0]) == {"max_drop", "thresholds", "accuracy", "expected_size", "val_accuracy",
                              "val_expected_size"}

    # drop 0: threshold .71 -> the 6 rows at .9 stop at 8 (wrong on test), the 4 at .7 go to 64 (right)
    assert points[0]["thresholds"] == [0.71, 1.0]
    assert points[0]["accuracy"] == pytest.approx(0.4)
    assert points[0]["expected_size"] == pytest.approx((6 * 8 + 4 * 64) / 10)
    # drop .5: threshold .5 -> everything stops at 8; right only on the 4 rows at .7
    assert points[1]["thresholds"] == [0.5, 1.0]
    assert points[1]["accuracy"] == pytest.approx(0.4)
    assert points[1]["expected_size"] == pytest.approx(8.0)

    # what searching on test would have given (shows the case discriminates)
    assert search_thresholds(test_probs, test_labels, 0.0)[0] == pytest.approx(0.91)
    assert search_thresholds(test_probs, test_labels, 0.5)[0] == pytest.approx(0.91)


def test_adaptive_curve_one_point_per_drop_default_drops():
    val_probs, val_labels = _random_probs(10)
    test_probs, test_labels = _random_probs(11)
    sizes = [8, 16, 32, 64]
    points = adaptive_curve(val_probs, val_labels, test_probs, test_labels, sizes)
    drops = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
    assert [p["max_drop"] for p in points] == list(drops)
    best = None
    for p, drop in zip(points, drops):
        found = search_thresholds(val_probs, val_labels, drop)
        cost = expected_size(cascade(val_probs, found)[1], sizes)
        if best is None or cost < best[0]:
            best = (cost, found)
        thresholds = best[1]
        pred, stop = cascade(test_probs, thresholds)
        assert p["thresholds"] == [round(t, 6) for t in thresholds]
        assert p["accuracy"] == pytest.approx((pred == test_labels).mean())
        assert p["expected_size"] == pytest.approx(expected_size(stop, sizes))
        assert sizes[0] <= p["expected_size"] <= sizes[-1]
