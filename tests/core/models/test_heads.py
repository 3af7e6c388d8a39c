"""MRL and MRL-E heads (mrl.core.models.heads)."""

import pytest
import torch
from torch import nn

from mrl.core.models.heads import MRLEHead, MRLHead, build_head


def test_mrle_logits_use_the_first_m_columns_of_one_linear():
    torch.manual_seed(0)
    sizes, dim, classes = [2, 5, 8], 8, 4
    head = MRLEHead(sizes, classes, dim)
    assert isinstance(head.classifier, nn.Linear)
    assert head.classifier.weight.shape == (classes, dim)
    z = torch.randn(3, dim)
    w = head.classifier.weight.detach().clone()
    b = head.classifier.bias.detach().clone()
    outs = head(z)
    assert len(outs) == len(sizes)
    for m, out in zip(sizes, outs):
        assert out.shape == (3, classes)
        assert torch.allclose(out, z[:, :m] @ w[:, :m].T + b, atol=1e-6)
    # at size d it is exactly the full linear layer
    assert torch.allclose(outs[-1], head.classifier(z), atol=1e-6)


def test_mrle_shares_one_set_of_parameters():
    head = MRLEHead([2, 4, 8], 3, 8)
    assert sum(p.numel() for p in head.parameters()) == 3 * 8 + 3


def test_mrl_head_has_an_independent_linear_per_size():
    torch.manual_seed(1)
    sizes, classes = [2, 4, 8], 5
    head = MRLHead(sizes, classes)
    assert len(head.classifiers) == 3
    for m, clf in zip(sizes, head.classifiers):
        assert isinstance(clf, nn.Linear)
        assert (clf.in_features, clf.out_features) == (m, classes)
    weights = [clf.weight for clf in head.classifiers]
    assert len({w.data_ptr() for w in weights}) == 3  # no shared storage
    assert sum(p.numel() for p in head.parameters()) == sum(m * classes + classes for m in sizes)

    z = torch.randn(4, 8)
    outs = head(z)
    for m, clf, out in zip(sizes, head.classifiers, outs):
        assert out.shape == (4, classes)
        assert torch.allclose(out, z[:, :m] @ clf.weight.T + clf.bias, atol=1e-6)

    # changing one classifier changes only its own logits
    with torch.no_grad():
        head.classifiers[1].weight.add_(1.0)
    outs2 = head(z)
    assert torch.equal(outs2[0], outs[0]) and torch.equal(outs2[2], outs[2])
    assert not torch.allclose(outs2[1], outs[1])


@pytest.mark.parametrize("kind", ["mrl", "mrl_e"])
def test_logits_at_size_m_ignore_coordinates_beyond_m(kind):
    torch.manual_seed(2)
    head = build_head(kind, [3, 6], 4, 6)
    z = torch.randn(2, 6)
    z2 = z.clone()
    z2[:, 3:] = torch.randn(2, 3) * 50
    a, b = head(z), head(z2)
    assert torch.equal(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


def test_build_head_kinds():
    assert isinstance(build_head("mrl", [4, 8], 3, 8), MRLHead)
    e = build_head("mrl_e", [4, 8], 3, 8)
    assert isinstance(e, MRLEHead) and e.classifier.in_features == 8
    assert build_head("mrl", [4, 8], 3, 8).sizes == [4, 8]


@pytest.mark.parametrize("kind", ["ff", "MRL", "", "linear"])
def test_build_head_rejects_unknown_kinds(kind):
    with pytest.raises(ValueError, match=r"head .* is not accepted; choose one of \['mrl', 'mrl_e', 'none'\]"):
        build_head(kind, [4, 8], 3, 8)
