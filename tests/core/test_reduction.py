"""Baselines on a fixed-feature representation (mrl.core.reduction): first m, PCA, random projection, linear probe."""

import numpy as np
import pytest

from mrl.core.reduction import PCA, first_m, gaussian_projection, linear_probe_accuracy

# --- first_m ---------------------------------------------------------------------------------------------------


def test_first_m_takes_leading_columns():
    z = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = first_m(z, 2)
    np.testing.assert_array_equal(out, [[0, 1], [4, 5], [8, 9]])
    assert out.shape == (3, 2)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(first_m(z, 1), [[0], [4], [8]])
    np.testing.assert_array_equal(first_m(z, 4), z)


# --- PCA -------------------------------------------------------------------------------------------------------

STDS = np.array([5.0, 3.0, 2.0, 1.0])  # variances 25, 9, 4, 1


def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _anisotropic(n=20000, seed=0):
    """Rows x = Q (g * STDS) + mu: principal directions are the columns of Q, variances STDS**2."""
    rng = np.random.default_rng(seed)
    q = _rotation(len(STDS), seed + 100)
    mu = np.array([10.0, -3.0, 0.5, 7.0])
    x = (rng.normal(size=(n, len(STDS))) * STDS) @ q.T + mu
    return x, q, mu


def test_pca_fit_recovers_known_axes_and_variances():
    x, q, mu = _anisotropic()
    pca = PCA.fit(x)
    assert pca.components.shape == (4, 4)
    np.testing.assert_allclose(pca.mean, mu, atol=0.1)
    # directions up to sign, in order of decreasing variance
    cos = np.abs(np.sum(pca.components * q.T, axis=1))
    assert np.all(cos > 0.99), cos
    np.testing.assert_allclose(pca.explained_variance, STDS**2, rtol=0.05)
    assert np.all(np.diff(pca.explained_variance) < 0)
    # orthonormal rows
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(4), atol=1e-10)


def test_pca_fit_exact_small_case():
    # points on the x axis only (centred at 1): first component +-e0 with variance 5/3 (ddof 1), second 0
    z = np.array([[-1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    pca = PCA.fit(z)
    np.testing.assert_allclose(pca.mean, [1.0, 0.0])
    np.testing.assert_allclose(np.abs(pca.components[0]), [1.0, 0.0], atol=1e-12)
    # sum of squares about the mean: 4 + 1 + 1 + 4 = 10, / (4 - 1)
    np.testing.assert_allclose(pca.explained_variance, [10 / 3, 0.0], atol=1e-12)
    t = pca.transform(z, 1)
    np.testing.assert_allclose(np.abs(t[:, 0]), [2.0, 1.0, 1.0, 2.0], atol=1e-6)


def test_pca_transform_full_rank_preserves_pairwise_distances():
    x, _, mu = _anisotropic(n=200, seed=3)
    pca = PCA.fit(x)
    t = pca.transform(x, 4)
    assert t.shape == (200, 4)
    assert t.dtype == np.float32
    centred = x - x.mean(axis=0)
    d_orig = np.linalg.norm(centred[:, None] - centred[None], axis=-1)
    d_new = np.linalg.norm(t[:, None].astype(np.float64) - t[None], axis=-1)
    np.testing.assert_allclose(d_new, d_orig, rtol=1e-4, atol=1e-4)
    # centred: the transformed data has zero mean, and the norms match too
    np.testing.assert_allclose(t.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), np.linalg.norm(centred, axis=1), rtol=1e-4)


def test_pca_transform_top_m_are_the_leading_coordinates():
    x, _, _ = _anisotropic(n=500, seed=4)
    pca = PCA.fit(x)
    full = pca.transform(x, 4)
    two = pca.transform(x, 2)
    assert two.shape == (500, 2)
    np.testing.assert_allclose(two, full[:, :2], rtol=1e-6)
    # the variance of each coordinate is the explained variance
    np.testing.assert_allclose(full.var(axis=0, ddof=1), pca.explained_variance, rtol=1e-4)


@pytest.mark.parametrize("m", [0, -1, 5, 100])
def test_pca_transform_m_out_of_range(m):
    x, _, _ = _anisotropic(n=50)
    pca = PCA.fit(x)
    with pytest.raises(ValueError):
        pca.transform(x, m)


def test_pca_transform_more_dims_than_rows_is_out_of_range():
    z = np.random.default_rng(0).normal(size=(3, 6))
    pca = PCA.fit(z)  # rank <= 3 components
    assert pca.components.shape == (3, 6)
    assert pca.transform(z, 3).shape == (3, 3)
    with pytest.raises(ValueError):
        pca.transform(z, 4)


# --- gaussian_projection ---------------------------------------------------------------------------------------


def test_gaussian_projection_shape_dtype_and_seed():
    r = gaussian_projection(32, 8, seed=5)
    assert r.shape == (32, 8)
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, gaussian_projection(32, 8, seed=5))
    assert not np.array_equal(r, gaussian_projection(32, 8, seed=6))
    assert not np.array_equal(gaussian_projection(32, 8), gaussian_projection(32, 8, seed=1))


def test_gaussian_projection_entry_scale():
    m = 256
    r = gaussian_projection(128, m, seed=0)
    assert abs(r.mean()) < 0.002  # std of the mean: (1/16) / sqrt(32768) ~ 3.5e-4
    assert r.std() == pytest.approx(1 / np.sqrt(m), rel=0.02)


def test_gaussian_projection_preserves_squared_norm_in_expectation():
    d, m = 64, 4096
    r = gaussian_projection(d, m, seed=0).astype(np.float64)
    x = np.random.default_rng(1).normal(size=(100, d)) * np.linspace(0.1, 3.0, d)
    ratio = (np.linalg.norm(x @ r, axis=1) ** 2) / (np.linalg.norm(x, axis=1) ** 2)
    # each ratio ~ chi2_m / m: mean 1, std sqrt(2/m) ~ 0.022
    assert ratio.mean() == pytest.approx(1.0, abs=0.03)
    assert np.all(np.abs(ratio - 1.0) < 0.12)


# --- linear_probe_accuracy -------------------------------------------------------------------------------------


def _blobs(n, seed, classes=3, d=8, sep=6.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = np.zeros((classes, d))
    centres[np.arange(classes), np.arange(classes)] = sep
    x = centres[y] + rng.normal(size=(n, d)) + 50.0  # offset: the probe standardises
    return x.astype(np.float32), y


def test_linear_probe_separable_data_reaches_one():
    x_tr, y_tr = _blobs(1000, 0)
    x_te, y_te = _blobs(300, 1)
    acc = linear_probe_accuracy(x_tr, y_tr, x_te, y_te, num_classes=3, epochs=10, lr=0.05, batch_size=100)
    assert acc >= 0.99


def test_linear_probe_two_classes_by_sign():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1500, 5)).astype(np.float32)
    x[:, 0] += np.where(x[:, 0] > 0, 1.0, -1.0)  # margin of 2 along feature 0
    y = (x[:, 0] > 0).astype(int)
    acc = linear_probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], num_classes=2, epochs=10, lr=0.05,
                                batch_size=100)
    assert acc >= 0.99


def test_linear_probe_random_labels_is_chance():
    rng = np.random.default_rng(3)
    x_tr = rng.normal(size=(1000, 10)).astype(np.float32)
    y_tr = rng.integers(0, 4, 1000)
    x_te = rng.normal(size=(4000, 10)).astype(np.float32)
    y_te = rng.integers(0, 4, 4000)
    acc = linear_probe_accuracy(x_tr, y_tr, x_te, y_te, num_classes=4, epochs=5, lr=0.05, batch_size=100)
    assert acc == pytest.approx(0.25, abs=0.04)


def test_linear_probe_is_deterministic_per_seed():
    x_tr, y_tr = _blobs(600, 4, sep=1.0)
    x_te, y_te = _blobs(300, 5, sep=1.0)
    a = linear_probe_accuracy(x_tr, y_tr, x_te, y_te, num_classes=3, epochs=3, batch_size=64, seed=7)
    b = linear_probe_accuracy(x_tr, y_tr, x_te, y_te, num_classes=3, epochs=3, batch_size=64, seed=7)
    assert a == b
    assert 0.0 <= a <= 1.0
