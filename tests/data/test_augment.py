"""Deterministic augmentation: per-id transforms independent of batching, originals untouched."""

import numpy as np
import pytest

from mrl.data.augment import augment, expand_ids, uniforms


def images(n=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)


def test_rows_depend_only_on_id_and_seed_not_on_batching():
    base = images()
    ids = np.arange(20, 60)
    src = base[ids % 20]
    whole = augment(src, ids, seed=3, n_base=20)
    parts = np.concatenate([augment(src[i:i + 7], ids[i:i + 7], seed=3, n_base=20) for i in range(0, 40, 7)])
    assert np.array_equal(whole, parts)
    shuffled = np.random.default_rng(1).permutation(40)
    assert np.array_equal(augment(src[shuffled], ids[shuffled], 3, 20), whole[shuffled])
    assert not np.array_equal(augment(src, ids, seed=4, n_base=20), whole)


def test_originals_pass_through_and_copies_differ():
    base = images()
    ids = np.arange(40)
    out = augment(base[ids % 20], ids, seed=0, n_base=20)
    assert out.dtype == np.uint8 and out.shape == (40, 1, 28, 28)
    assert np.array_equal(out[:20], base)
    changed = [(out[i] != base[i % 20]).mean() for i in range(20, 40)]
    assert min(changed) > 0.05  # every copy is visibly transformed


def test_shift_without_other_changes_moves_pixels():
    # a single bright pixel moves by at most 3 px (and may be mirrored); it never leaves a blank image bright
    img = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    img[0, 0, 14, 14] = 200
    outs = augment(np.repeat(img, 50, axis=0), np.arange(1, 51), seed=0, n_base=1)
    ys, xs = np.nonzero(outs[:, 0].max(axis=0))
    assert ys.min() >= 11 and ys.max() <= 17
    assert xs.min() >= 13 - 3 - 1 and xs.max() <= 14 + 3 + 1  # flip mirrors 14 -> 13
    assert np.array_equal(augment(np.zeros_like(img), np.array([5]), 0, 1), np.zeros_like(img))


def test_uniforms_are_in_range_and_spread():
    u = uniforms(np.arange(20000), seed=0, count=4)
    assert u.shape == (20000, 4) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and np.corrcoef(u[:, 0], u[:, 1])[0, 1] < 0.03


def test_expand_ids_maps_copies_to_base_rows():
    ids, src = expand_ids(3, 8)
    assert ids.tolist() == list(range(8)) and src.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="augment_rows=2 is below the split's 3 rows"):
        expand_ids(3, 2)


def test_augmented_rows_are_the_originals_then_seeded_copies_of_row_id_mod_n():
    import pyarrow as pa

    from mrl.data.readers import TableRows, image_table
    from mrl.stages.embed import augmented_rows

    base = images(4)
    table = TableRows(image_table(base, np.array([0, 1, 2, 3]), np.arange(4)))
    out = augmented_rows(table, 2, 10, seed=0, image_shape=(1, 28, 28))  # one unit of work: rows 2..9
    assert isinstance(out, pa.Table)
    assert out.column("id").to_pylist() == list(range(2, 10))
    assert out.column("label").to_pylist() == [2, 3, 0, 1, 2, 3, 0, 1]  # labels 0..3 of base rows id % 4
    pixels = out.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 1, 28, 28)
    rows = dict(zip(out.column("id").to_pylist(), pixels))
    assert np.array_equal(rows[2], base[2]) and np.array_equal(rows[3], base[3])  # originals untouched
    assert np.array_equal(rows[9], augment(base[1:2], np.array([9]), 0, 4)[0])  # copy 9 is base row 1's
    again = augmented_rows(table, 8, 10, seed=0, image_shape=(1, 28, 28))  # any cut rebuilds the same rows
    assert np.array_equal(again.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 1, 28, 28),
                          pixels[-2:])
