"""Training objectives: length-bucketed text batches, and a text model trained end to end in-process."""

import numpy as np
import pytest
import torch

from mrl.config import TrainJobConfig
from mrl.configio import from_dict
from mrl.stages.objectives import bucket_by_length, rank_batches

TINY_TEXT_MODEL = {"encoder": "bert", "dim": 32, "head": "none", "nesting": {"min_size": 8},
                   "text": {"vocab_size": 600, "max_tokens": 32},
                   "backbone": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 64}}


def test_bucketing_keeps_every_row_once_in_batches_of_the_same_size():
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    batches = rank_batches(np.arange(1000), 0, 1, 32, seed=1)
    bucketed = bucket_by_length(batches, lengths, seed=1, window=8)
    assert sorted(len(b) for b in bucketed) == sorted(len(b) for b in batches)
    assert sorted(np.concatenate(bucketed).tolist()) == sorted(np.concatenate(batches).tolist())
    spread = np.mean([np.ptp(lengths[b]) for b in bucketed])
    assert spread < 0.5 * np.mean([np.ptp(lengths[b]) for b in batches])  # similar lengths together


def test_a_text_model_trains_contrastively_and_keeps_its_tokenizer(tmp_path):
    from mrl.artifacts.model_files import load_model_dir, save_model_dir
    from mrl.data.sources import load_text_split
    from mrl.stages.train import train_local

    job = from_dict(TrainJobConfig, {
        "data": {"source": "wordnet", "path": str(tmp_path / "wordnet"), "train_limit": 1200, "val_fraction": 0.2},
        "model": TINY_TEXT_MODEL, "train": {"epochs": 2, "batch_size": 64, "lr": 3e-3},
        "resources": {"num_workers": 1, "cpus_per_worker": 1}})
    torch.manual_seed(0)
    model = train_local(job, threads=1)
    assert model.tokenizer is not None and model.tokenizer.max_tokens == 32
    rows = load_text_split(job.data, "train")
    z = model.embed_texts(rows["query"][:50])
    assert z.shape == (50, 32) and np.isfinite(z).all()
    from mrl.core.models import build_model

    untrained = build_model(TINY_TEXT_MODEL).eval()
    untrained.tokenizer = model.tokenizer
    assert _pair_recall(model, rows) > _pair_recall(untrained, rows) + 0.1  # it learned to match the pairs
    saved = save_model_dir(model, tmp_path / "model")
    assert (saved / "tokenizer.json").is_file()
    again = load_model_dir(saved)
    assert np.allclose(again.embed_texts(rows["query"][:50]), z, atol=1e-5)
    assert again.tokenizer.to_json() == model.tokenizer.to_json()


def _pair_recall(model, rows, n=200) -> float:
    q = model.embed_texts(rows["query"][:n])
    d = model.embed_texts(rows["document"][:n])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return float(np.mean((q @ d.T).argmax(1) == np.arange(n)))


def test_a_text_model_is_not_saved_without_its_tokenizer(tmp_path):
    from mrl.artifacts.model_files import save_model_dir
    from mrl.core.models import build_model

    with pytest.raises(ValueError, match="saved with its tokenizer"):
        save_model_dir(build_model(TINY_TEXT_MODEL), tmp_path)


def test_text_data_with_an_image_encoder_is_refused_at_load():
    from mrl.configio import ConfigError

    with pytest.raises(ConfigError, match="data.source 'wordnet' is text data but model.encoder 'cnn' is an image"):
        from_dict(TrainJobConfig, {"data": {"source": "wordnet", "path": "/tmp/x"}})


@pytest.mark.slow
def test_an_epoch_stream_gives_exactly_its_steps_of_shuffled_distinct_rows():
    """EpochStream over a real Ray Data iterator: `steps` full batches, no row twice, a seeded order."""
    import json

    from conftest import run_isolated

    out = run_isolated("""
import json, numpy as np, ray
from mrl.stages.objectives import EpochStream
ray.init(address="local", num_cpus=2, include_dashboard=False)
ds = ray.data.from_numpy(np.arange(1000).reshape(-1, 1)).map_batches(
    lambda b: {"label": b["data"][:, 0], "image": np.repeat(b["data"], 4, axis=1).astype(np.uint8)},
    batch_size=100)
shard = ds.repartition(10).iterator()
epochs = [[b["label"].tolist() for b in EpochStream(shard, 7, 128, 300, seed)] for seed in (0, 1)]
ray.shutdown()
print(json.dumps(epochs))
""")
    epochs = json.loads(out.strip().splitlines()[-1])
    for batches in epochs:
        rows = [r for b in batches for r in b]
        assert len(batches) == 7 and all(len(b) == 128 for b in batches)
        assert len(set(rows)) == len(rows) and set(rows) <= set(range(1000))
    assert epochs[0] != epochs[1]  # another epoch seed, another order
    first = epochs[0][0]
    assert first != sorted(first)  # rows are mixed within a window, not handed on in block order
