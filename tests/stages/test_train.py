"""Pure helpers of the train stage: the learning-rate factor and per-rank batches (mrl.stages.train)."""

import math

import numpy as np
import pytest

from mrl.stages.objectives import rank_batches
from mrl.stages.train import lr_factor

# ---------------------------------------------------------------- lr_factor

def test_warmup_is_linear():
    # 100 steps, 10% warm-up -> 10 warm-up steps: (step + 1) / 10
    assert lr_factor(0, 100) == pytest.approx(0.1)
    assert lr_factor(4, 100) == pytest.approx(0.5)
    assert lr_factor(9, 100) == pytest.approx(1.0)


def test_cosine_endpoints_and_midpoint():
    assert lr_factor(10, 100) == pytest.approx(1.0)            # start of decay
    assert lr_factor(55, 100) == pytest.approx(0.5)            # half-way through 90 decay steps
    assert lr_factor(100, 100) == pytest.approx(0.0, abs=1e-12)  # end
    assert lr_factor(250, 100) == pytest.approx(0.0, abs=1e-12)  # clamped beyond the end
    assert lr_factor(99, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_cosine_is_monotone_after_warmup():
    values = [lr_factor(s, 200, warmup_fraction=0.05) for s in range(10, 201)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule():
    assert lr_factor(0, 100, schedule="constant") == pytest.approx(0.1)  # warm-up still applies
    assert lr_factor(10, 100, schedule="constant") == 1.0
    assert lr_factor(99, 100, schedule="constant") == 1.0


def test_warmup_fraction_and_tiny_runs():
    assert lr_factor(0, 100, warmup_fraction=0.2) == pytest.approx(1 / 20)
    # fewer steps than one warm-up step: warm-up is 1 step, factor 1 at step 0
    assert lr_factor(0, 5) == pytest.approx(1.0)
    assert lr_factor(0, 1) == pytest.approx(1.0)
    assert lr_factor(0, 100, warmup_fraction=0.0) == pytest.approx(1.0)


# ---------------------------------------------------------------- rank_batches

@pytest.mark.parametrize("n, world, batch", [(103, 3, 10), (64, 2, 8), (50, 1, 7), (40, 4, 10)])
def test_rank_batches_equal_full_disjoint(n, world, batch):
    indices = np.arange(1000, 1000 + n)  # positions, not 0..n-1, to catch index/position mix-ups
    per_rank = [rank_batches(indices, r, world, batch, seed=3) for r in range(world)]
    expected_steps = (n // world) // batch
    seen = []
    for batches in per_rank:
        assert len(batches) == expected_steps
        for b in batches:
            assert len(b) == batch
            seen.extend(b.tolist())
    assert len(seen) == len(set(seen)) == world * expected_steps * batch  # disjoint across ranks and batches
    assert set(seen) <= set(indices.tolist())


def test_rank_batches_seeded_shuffle():
    idx = np.arange(40)
    a = rank_batches(idx, 0, 2, 5, seed=1)
    b = rank_batches(idx, 0, 2, 5, seed=1)
    c = rank_batches(idx, 0, 2, 5, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(np.concatenate(a), np.arange(0, 40, 2)[:20])  # actually shuffled


def test_rank_batches_single_rank_covers_all_full_batches():
    idx = np.arange(20)
    batches = rank_batches(idx, 0, 1, 5, seed=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(20))


def test_rank_batches_raises_without_a_full_batch():
    with pytest.raises(ValueError, match=r"10 training rows give no full batch of 8 on 2 workers"):
        rank_batches(np.arange(10), 0, 2, 8, seed=0)
    with pytest.raises(ValueError, match=r"lower train\.batch_size"):
        rank_batches(np.arange(0), 0, 1, 1, seed=0)


def test_checkpoint_uri_keeps_the_scheme_of_remote_storage():
    import pyarrow.fs
    import ray.train

    from mrl.stages.train import checkpoint_uri

    s3 = pyarrow.fs.S3FileSystem(anonymous=True, region="us-east-1")  # constructed offline, never contacted
    assert checkpoint_uri(ray.train.Checkpoint("bucket/run/checkpoint_1", filesystem=s3)) == \
        "s3://bucket/run/checkpoint_1"
    assert checkpoint_uri(ray.train.Checkpoint("/mnt/shared/run/checkpoint_1")) == "/mnt/shared/run/checkpoint_1"
    assert checkpoint_uri(ray.train.Checkpoint("file:///mnt/shared/c")) == "/mnt/shared/c"


def test_cache_blocks_auto_keeps_what_fits_a_quarter_of_the_object_store():
    from mrl.stages.train import cache_blocks

    store = 4 * 2**30
    fashion, imagenet = 48_000 * (784 + 16), 1_281_167 * (3 * 224 * 224 + 16)
    assert cache_blocks("auto", fashion, store) and not cache_blocks("auto", imagenet, store)
    assert cache_blocks("auto", 2**30, store) and not cache_blocks("auto", 2**30 + 1, store)
    assert not cache_blocks("auto", 1, 0)  # no object store reported: stream
    assert cache_blocks("always", imagenet, store) and not cache_blocks("never", fashion, store)


def test_cache_blocks_setting_is_validated():
    from mrl.config import TrainJobConfig
    from mrl.configio import ConfigError, load_config

    assert load_config(TrainJobConfig, overrides=["train.cache_blocks=never"]).train.cache_blocks == "never"
    with pytest.raises(ConfigError, match="cache_blocks"):
        load_config(TrainJobConfig, overrides=["train.cache_blocks=sometimes"])
