"""The Matryoshka losses (mrl.core.losses)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mrl.core.losses import MatryoshkaEmbeddingLoss, MatryoshkaLoss, info_nce, shrink, weighted_sum
from mrl.core.models.heads import MRLEHead, MRLHead


def _ce(logits, target):
    """Cross-entropy written out by hand: mean over rows of logsumexp - logit[target]."""
    lse = torch.logsumexp(logits, dim=1)
    picked = logits[torch.arange(len(target)), target]
    return (lse - picked).mean()


def test_matryoshka_loss_is_the_weighted_sum_of_per_size_cross_entropies():
    torch.manual_seed(0)
    target = torch.tensor([0, 2, 1, 2])
    outputs = [torch.randn(4, 3) for _ in range(3)]
    weights = [1.0, 0.5, 2.0]
    total, per_size = MatryoshkaLoss(weights)(outputs, target)
    expected_per = [_ce(o, target) for o in outputs]
    expected = sum(w * l for w, l in zip(weights, expected_per))
    assert torch.allclose(total, expected, atol=1e-6)
    assert per_size.shape == (3,)
    assert torch.allclose(per_size, torch.stack(expected_per), atol=1e-6)
    assert not per_size.requires_grad


def test_matryoshka_loss_hand_computed_value():
    # two classes, logits [0, 0] -> CE = log 2; logits [log 3, 0] with target 0 -> CE = log(4/3)
    target = torch.tensor([0])
    outputs = [torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])]
    total, per_size = MatryoshkaLoss([2.0, 3.0])(outputs, target)
    assert total.item() == pytest.approx(2 * math.log(2) + 3 * math.log(4 / 3), rel=1e-6)
    assert per_size.tolist() == pytest.approx([math.log(2), math.log(4 / 3)], rel=1e-6)


def test_zero_weight_size_does_not_contribute():
    target = torch.tensor([1, 0])
    a = torch.randn(2, 4)
    b = torch.randn(2, 4) * 100
    total, _ = MatryoshkaLoss([1.0, 0.0])([a, b], target)
    assert torch.allclose(total, F.cross_entropy(a, target))


def test_matryoshka_loss_rejects_wrong_number_of_outputs():
    with pytest.raises(ValueError, match=r"2 outputs for 3 nesting sizes"):
        MatryoshkaLoss([1.0, 1.0, 1.0])([torch.randn(2, 3)] * 2, torch.tensor([0, 1]))


def test_weights_follow_the_loss_dtype():
    target = torch.tensor([0, 1, 2])
    outputs = [torch.randn(3, 3, dtype=torch.float64) for _ in range(2)]
    loss = MatryoshkaLoss([1.0, 0.25])  # exactly representable in float32 and float64
    assert loss.weights.dtype == torch.float32
    total, per_size = loss(outputs, target)
    assert total.dtype == torch.float64
    assert per_size.dtype == torch.float64
    expected = F.cross_entropy(outputs[0], target) + 0.25 * F.cross_entropy(outputs[1], target)
    assert torch.allclose(total, expected, rtol=0, atol=1e-12)  # computed in float64, not rounded via float32


def test_weighted_sum_casts_weights_and_checks_length():
    losses = [torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)]
    out = weighted_sum(losses, [0.5, 0.25])
    assert out.dtype == torch.float64 and out.item() == 1.0
    out = weighted_sum(losses, torch.tensor([1.0, 1.0], dtype=torch.float32))
    assert out.dtype == torch.float64 and out.item() == 3.0
    with pytest.raises(ValueError, match=r"3 weights for 2 losses"):
        weighted_sum(losses, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("head_kind", ["mrl", "mrl_e"])
def test_gradients_reach_every_prefix_block(head_kind):
    torch.manual_seed(1)
    sizes, dim, classes = [2, 4, 8], 8, 5
    head = MRLHead(sizes, classes) if head_kind == "mrl" else MRLEHead(sizes, classes, dim)
    z = torch.randn(6, dim, requires_grad=True)
    target = torch.randint(0, classes, (6,))
    total, _ = MatryoshkaLoss([1.0, 1.0, 1.0])(head(z), target)
    total.backward()
    assert z.grad is not None
    bounds = [0] + sizes
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        assert z.grad[:, lo:hi].abs().sum() > 0, f"no gradient in z[:, {lo}:{hi}]"


def test_gradient_of_a_prefix_only_size_stays_in_that_prefix():
    # with only the smallest size weighted, coordinates beyond it get exactly zero gradient
    torch.manual_seed(2)
    head = MRLHead([2, 8], 3)
    z = torch.randn(4, 8, requires_grad=True)
    total, _ = MatryoshkaLoss([1.0, 0.0])(head(z), torch.tensor([0, 1, 2, 0]))
    total.backward()
    assert z.grad[:, :2].abs().sum() > 0
    assert torch.count_nonzero(z.grad[:, 2:]) == 0


def test_shrink_normalises_the_prefix():
    z = torch.tensor([[3.0, 4.0, 100.0], [0.0, 2.0, -1.0]])
    out = shrink(z, 2)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_embedding_loss_is_weighted_sum_over_normalised_prefixes():
    torch.manual_seed(3)
    sizes, weights = [2, 4, 8], [1.0, 2.0, 0.5]
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    total, per_size = MatryoshkaEmbeddingLoss(sizes, weights, info_nce)(a, b)
    expected = []
    for m in sizes:
        an = a[:, :m] / a[:, :m].norm(dim=1, keepdim=True)
        bn = b[:, :m] / b[:, :m].norm(dim=1, keepdim=True)
        expected.append(info_nce(an, bn))
    assert torch.allclose(per_size, torch.stack(expected), atol=1e-6)
    assert torch.allclose(total, sum(w * e for w, e in zip(weights, expected)), atol=1e-5)


def test_embedding_loss_sees_only_normalised_prefixes():
    # loss_fn records what it is given: each call gets unit-norm rows of width m
    seen = []

    def record(x, y):
        seen.append((x.shape[1], x.norm(dim=1), y.norm(dim=1)))
        return (x * y).sum()

    a, b = torch.randn(3, 6) * 10, torch.randn(3, 6) * 10
    MatryoshkaEmbeddingLoss([1, 3, 6], [1.0, 1.0, 1.0], record)(a, b)
    assert [s[0] for s in seen] == [1, 3, 6]
    for _, na, nb in seen:
        assert torch.allclose(na, torch.ones(3)) and torch.allclose(nb, torch.ones(3))


def test_embedding_loss_rejects_length_mismatch():
    with pytest.raises(ValueError, match=r"1 weights for 2 sizes"):
        MatryoshkaEmbeddingLoss([4, 8], [1.0], info_nce)
    with pytest.raises(ValueError, match=r"1 loss functions for 2 sizes"):
        MatryoshkaEmbeddingLoss([4, 8], [1.0, 1.0], [info_nce])


def test_each_prefix_can_have_its_own_temperature():
    from functools import partial

    from mrl.core.losses import prefix_temperatures

    assert prefix_temperatures([8, 32, 128], 0.05) == [0.05, 0.05, 0.05]
    assert prefix_temperatures([8, 32, 128], 0.05, 0.5) == pytest.approx([0.2, 0.1, 0.05])
    torch.manual_seed(4)
    sizes, weights = [2, 4, 8], [1.0, 2.0, 0.5]
    temps = prefix_temperatures(sizes, 0.05, 1.0)  # 0.2, 0.1, 0.05
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    total, per_size = MatryoshkaEmbeddingLoss(sizes, weights, [partial(info_nce, temperature=t) for t in temps])(a, b)
    expected = [info_nce(shrink(a, m), shrink(b, m), temperature=t) for m, t in zip(sizes, temps)]
    torch.testing.assert_close(per_size, torch.stack(expected))
    torch.testing.assert_close(total, sum(w * e for w, e in zip(weights, expected)))
    _, shared = MatryoshkaEmbeddingLoss(sizes, weights, info_nce)(a, b)
    assert not torch.allclose(per_size[:2], shared[:2]) and torch.allclose(per_size[2], shared[2])  # d keeps 0.05


def test_info_nce_identical_separated_pairs_is_small():
    e = torch.eye(4, dtype=torch.float64)  # orthonormal rows: perfect separation
    loss = info_nce(e, e, temperature=0.05)
    # each row: logits 20 on the diagonal, 0 elsewhere -> CE = log(1 + 3 e^-20)
    expected = math.log1p(3 * math.exp(-20.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert 0 <= info_nce(e.float(), e.float()).item() < 1e-6


def test_info_nce_mismatched_pairs_is_large():
    e = torch.eye(4)
    shifted = e.roll(1, dims=0)  # every a_i matches some b_j with j != i
    loss = info_nce(e, shifted, temperature=0.05)
    assert loss.item() == pytest.approx(20.0 + math.log1p(3 * math.exp(-20.0)), rel=1e-4)


def test_info_nce_uniform_similarity_is_log_batch():
    a = torch.ones(5, 3) / math.sqrt(3)
    assert info_nce(a, a).item() == pytest.approx(math.log(5), rel=1e-5)


def test_per_size_loss_by_registered_name():
    from mrl.core.losses import LOSSES

    torch.manual_seed(0)
    outputs, target = [torch.randn(4, 3), torch.randn(4, 3)], torch.tensor([0, 1, 2, 0])
    by_name, _ = MatryoshkaLoss([1.0, 2.0], "cross_entropy")(outputs, target)
    expected = F.cross_entropy(outputs[0], target) + 2 * F.cross_entropy(outputs[1], target)
    assert torch.allclose(by_name, expected)
    assert "cross_entropy" in LOSSES
    with pytest.raises(ValueError, match=r"loss 'hinge' is not accepted; choose one of \['cross_entropy'\]"):
        MatryoshkaLoss([1.0], "hinge")


def test_contrastive_matryoshka_loss_matches_a_hand_computed_example():
    """Two pairs, sizes [1, 2], weights [1, 2], temperature 1, worked out by hand.

    m=1: prefixes normalise to a=(1),(-1), b=(1),(-1): logits [[1,-1],[-1,1]], every row and column gives
    log(1 + e^-2).
    m=2: a1=(1,1)/sqrt2, a2=(-1,1)/sqrt2, b1=(1,0), b2=(-1,-1)/sqrt2: logits [[r,-1],[-r,0]] with r=1/sqrt2;
    rows: log(e^r + e^-1) - r and log(e^-r + 1); columns: log(e^r + e^-r) - r and log(e^-1 + 1).
    """
    import math
    from functools import partial

    a = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, -1.0]])
    r = 1 / math.sqrt(2)
    loss_1 = math.log(1 + math.exp(-2))
    rows = (math.log(math.exp(r) + math.exp(-1)) - r + math.log(math.exp(-r) + 1)) / 2
    cols = (math.log(math.exp(r) + math.exp(-r)) - r + math.log(math.exp(-1) + 1)) / 2
    loss_2 = (rows + cols) / 2
    total, per_size = MatryoshkaEmbeddingLoss([1, 2], [1.0, 2.0], partial(info_nce, temperature=1.0))(a, b)
    assert per_size.tolist() == pytest.approx([loss_1, loss_2], abs=1e-6)
    assert total.item() == pytest.approx(loss_1 + 2 * loss_2, abs=1e-6)
