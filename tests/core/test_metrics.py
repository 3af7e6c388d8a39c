"""Per-size quality metrics (mrl.core.metrics), against hand-computed values."""

import math

import numpy as np
import pytest

from mrl.core.metrics import hits_matrix, relevant_counts, retrieval_metrics, top1_accuracy


def test_top1_accuracy():
    logits = np.array([[0.1, 0.9, 0.0],
                       [2.0, 1.0, 0.0],
                       [0.0, 0.0, 5.0],
                       [1.0, 3.0, 2.0]])
    assert top1_accuracy(logits, np.array([1, 0, 2, 2])) == pytest.approx(0.75)
    assert top1_accuracy(logits, np.array([0, 1, 0, 0])) == 0.0
    assert top1_accuracy(logits.tolist(), [1, 0, 2, 1]) == 1.0


def test_top1_accuracy_ties_pick_the_lower_class():
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert top1_accuracy(logits, np.array([0, 1])) == 1.0
    assert top1_accuracy(logits, np.array([1, 2])) == 0.0


def test_retrieval_metrics_hand_computed():
    # database: two 0s, three 1s, one 3; no item has label 2
    database = np.array([0, 0, 1, 1, 1, 3])
    queries = np.array([0, 1, 2])
    retrieved = np.array([[0, 1, 0],     # hits 1 0 1: P@1=1, P@3=2/3 -> AP = (1 + 2/3)/3 = 5/9
                          [3, 1, -1],    # hits 0 1 0: P@2=1/2          -> AP = (1/2)/3 = 1/6
                          [0, 1, 3]])    # hits 0 0 0                   -> AP = 0
    out = retrieval_metrics(retrieved, queries, database, k=3)
    assert set(out) == {"nn1", "map@3", "precision@3", "recall@3"}
    assert out["nn1"] == pytest.approx(1 / 3)
    assert out["map@3"] == pytest.approx((5 / 9 + 1 / 6 + 0) / 3)   # = 13/54
    assert out["precision@3"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    # recall: q0 finds 2 of its 2, q1 finds 1 of its 3; q2 has no relevant item and is left out
    assert out["recall@3"] == pytest.approx((1 + 1 / 3) / 2)


def test_map_is_divided_by_k_not_by_the_number_of_hits():
    # a single hit at rank 1 with k=4: AP@4 = P@1 * 1 / 4 = 0.25
    out = retrieval_metrics(np.array([[5, 6, 6, 6]]), np.array([5]), np.array([5, 6, 6, 6]), k=4)
    assert out["map@4"] == pytest.approx(0.25)
    assert out["precision@4"] == pytest.approx(0.25)
    assert out["recall@4"] == pytest.approx(1.0)
    assert out["nn1"] == 1.0


def test_perfect_ranking():
    database = np.array([1, 1, 1, 2, 2])
    out = retrieval_metrics(np.array([[1, 1, 1], [2, 2, 1]]), np.array([1, 2]), database, k=3)
    # q0: all three relevant -> AP = (1+1+1)/3 = 1; q1: hits 1 1 0 -> AP = (1+1)/3
    assert out["map@3"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["precision@3"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["recall@3"] == pytest.approx(1.0)
    assert out["nn1"] == 1.0


def test_ranking_shorter_than_k_counts_missing_places_as_not_relevant():
    # the database has 2 items, k = 5: only 2 retrieved labels per query
    database = np.array([0, 0])
    out = retrieval_metrics(np.array([[0, 0]]), np.array([0]), database, k=5)
    assert out["precision@5"] == pytest.approx(2 / 5)
    assert out["map@5"] == pytest.approx((1 + 1) / 5)
    assert out["recall@5"] == pytest.approx(1.0)
    assert out["nn1"] == 1.0


def test_padded_minus_one_results_are_not_relevant():
    database = np.array([0, 0, 0, 1])
    retrieved = np.array([[-1, 0, -1, -1]])  # one real result at rank 2
    out = retrieval_metrics(retrieved, np.array([0]), database, k=4)
    assert out["nn1"] == 0.0
    assert out["precision@4"] == pytest.approx(1 / 4)
    assert out["map@4"] == pytest.approx((1 / 2) / 4)
    assert out["recall@4"] == pytest.approx(1 / 3)


def test_minus_one_query_label_never_matches_padding():
    h = hits_matrix(np.array([[-1, -1]]), np.array([-1]), k=2)
    assert not h.any()


def test_wider_rankings_are_cut_at_k():
    database = np.array([0, 0, 0, 0])
    out = retrieval_metrics(np.array([[1, 0, 0, 0, 0]]), np.array([0]), database, k=2)
    # only ranks 1-2 count: hits 0 1 -> P@2 = 1/2, AP = (1/2)/2
    assert out["precision@2"] == pytest.approx(0.5)
    assert out["map@2"] == pytest.approx(0.25)
    assert out["recall@2"] == pytest.approx(1 / 4)


def test_tied_labels_in_a_ranking_all_count():
    # several results of the same label (as from tied scores) each count once, in rank order
    database = np.array([7, 7, 7, 8])
    out = retrieval_metrics(np.array([[8, 7, 7]]), np.array([7]), database, k=3)
    # hits 0 1 1: P@2 = 1/2, P@3 = 2/3 -> AP = (1/2 + 2/3)/3
    assert out["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert out["precision@3"] == pytest.approx(2 / 3)
    assert out["recall@3"] == pytest.approx(2 / 3)


def test_recall_is_nan_when_no_query_has_relevant_items():
    out = retrieval_metrics(np.array([[1, 1]]), np.array([0]), np.array([1, 1]), k=2)
    assert math.isnan(out["recall@2"])
    assert out["precision@2"] == 0.0 and out["map@2"] == 0.0


def test_relevant_counts():
    assert relevant_counts(np.array([0, 1, 2, 0]), np.array([0, 1, 1, 3, 0, 0])).tolist() == [3, 2, 0, 3]


def test_hits_matrix_pads_to_k():
    h = hits_matrix(np.array([[1, 2], [2, 2]]), np.array([2, 2]), k=3)
    assert h.shape == (2, 3)
    assert h.tolist() == [[False, True, False], [True, True, False]]


@pytest.mark.parametrize("k", [0, -1])
def test_k_must_be_positive(k):
    with pytest.raises(ValueError, match=r"k must be >= 1"):
        retrieval_metrics(np.array([[0]]), np.array([0]), np.array([0]), k=k)


def test_pair_metrics_by_hand():
    from mrl.core.metrics import pair_metrics

    positions = np.array([[3, 1, 2], [0, 2, 1], [1, 0, 3], [-1, -1, -1]])
    targets = np.array([3, 1, 2, 0])  # ranks: 1st, 3rd, not found, not found
    got = pair_metrics(positions, targets, k=3)
    assert got == pytest.approx({"r@1": 0.25, "r@3": 0.5, "mrr@3": (1 + 1 / 3) / 4})
    assert pair_metrics(positions, targets, k=2)["r@2"] == 0.25
