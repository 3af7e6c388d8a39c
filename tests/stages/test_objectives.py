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


def test_text_validation_reports_pair_recall_at_1_and_at_10_per_size(tmp_path):
    """The per-epoch metrics of a text model: val_top1_* (pair R@1) and val_r10_* (pair R@10) for every size,
    R@10 >= R@1, both the share of validation queries whose own document ranks first / in the top 10."""
    from mrl.stages.train import run_loop

    job = _text_job(tmp_path, epochs=1, batch_size=32)
    seen = []
    model = run_loop(job, on_epoch=lambda metrics, state: seen.append(metrics))
    metrics = seen[-1]
    for m in model.sizes:
        assert 0 <= metrics[f"val_top1_d{m}"] <= metrics[f"val_r10_d{m}"] <= 1
    assert metrics["val_r10_full"] == metrics[f"val_r10_d{model.sizes[-1]}"] > metrics["val_top1_full"]
    from mrl.stages.objectives import _pair_hits

    scores = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.4, 0.6], [0.3, 0.2, 0.1]])
    assert _pair_hits(scores, torch.arange(3)).tolist() == [1, 3]  # ranks 0, 2, 2: one first, all in the top 10


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


def _text_job(tmp_path, **train):
    return from_dict(TrainJobConfig, {
        "data": {"source": "wordnet", "path": str(tmp_path / "wordnet"), "train_limit": 600, "val_fraction": 0.2},
        "model": TINY_TEXT_MODEL, "train": {"batch_size": 16, **train},
        "resources": {"num_workers": 2, "cpus_per_worker": 1}})


def _loss_and_grads(job, tokenizer_json: str, batch: np.ndarray, rank: int = 0, world: int = 1, port: int = 0):
    """One step's loss and parameter gradients of `ContrastivePairs` on this rank's share of `batch`: in process
    for world 1; for world > 1 inside a real gloo process group, the model wrapped in DDP as Ray Train does."""
    import torch.distributed as dist

    from mrl.core.models import build_model
    from mrl.data.tokenize import TextTokenizer
    from mrl.stages.objectives import ContrastivePairs

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model(TINY_TEXT_MODEL).eval()  # eval: no dropout, so both runs compute the same function
        tokenizer = TextTokenizer.from_json(tokenizer_json, job.model.text.max_tokens)
        objective = ContrastivePairs(job, rank, world, torch.device("cpu"), tokenizer)
        wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        loss = objective.loss(wrapped, np.array_split(batch, world)[rank], (0, 0))
        loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    finally:
        if world > 1:
            dist.destroy_process_group()


def _rank_main(rank, world, port, job, tokenizer_json, batch, out):
    loss, grads = _loss_and_grads(job, tokenizer_json, batch, rank, world, port)
    out.put((rank, (loss, {name: g.numpy() for name, g in grads.items()})))  # arrays: tensors travel by fd


def _two_workers(job, tokenizer_json: str, batch: np.ndarray) -> dict:
    import multiprocessing as mp

    from conftest import free_port

    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, job, tokenizer_json, batch, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return got


def test_two_workers_of_batch_b_train_as_one_worker_of_batch_2b_with_global_negatives(tmp_path):
    """train.negatives=global: the loss of 2 workers x 8 pairs (a real gloo group, DDP) equals 1 worker x 16 on
    every rank, and so do DDP's averaged gradients; local negatives (each worker's 8) give another loss."""
    from mrl.data.sources import load_text_split
    from mrl.data.tokenize import train_tokenizer

    job = _text_job(tmp_path)
    rows = load_text_split(job.data, "train")
    text = job.model.text
    tokenizer_json = train_tokenizer(rows["query"] + rows["document"], text.vocab_size, text.max_tokens).to_json()
    batch = np.arange(16)
    loss_1, grads_1 = _loss_and_grads(job, tokenizer_json, batch)
    ranks = _two_workers(job, tokenizer_json, batch)
    for rank, (loss_2, grads_2) in ranks.items():
        assert abs(loss_2 - loss_1) < 1e-5 * max(1.0, abs(loss_1)), (rank, loss_2, loss_1)
        assert grads_2.keys() == grads_1.keys()
        for name, g in grads_1.items():
            torch.testing.assert_close(torch.from_numpy(grads_2[name]), g, atol=1e-6, rtol=1e-4,
                                       msg=f"rank {rank}: {name}")
    local = _two_workers(_text_job(tmp_path, negatives="local"), tokenizer_json, batch)
    assert all(abs(loss - loss_1) > 1e-3 for loss, _ in local.values())  # 8 negatives, not 16


def test_sampled_sizes_are_seeded_by_step_keep_d_and_weight_only_the_drawn_sizes():
    from mrl.core.losses import MatryoshkaEmbeddingLoss, info_nce, sample_sizes

    draws = [sample_sizes(7, 3, (0, 0, step)) for step in range(50)]
    assert all(len(d) == 3 and d[-1] == 6 and d == sorted(set(d)) for d in draws)  # d (position 6) every step
    assert draws == [sample_sizes(7, 3, (0, 0, step)) for step in range(50)]  # seeded: a rerun draws the same
    assert len({tuple(d) for d in draws}) > 5  # and the draw changes from step to step
    assert {i for d in draws for i in d} == set(range(7))
    assert sample_sizes(7, 0, (0, 0, 0)) == sample_sizes(7, 9, (0, 0, 0)) == list(range(7))
    assert all(len(sample_sizes(4, 2, (1, 2, s), keep_last=False)) == 2 for s in range(10))
    assert any(3 not in sample_sizes(4, 2, (1, 2, s), keep_last=False) for s in range(10))

    torch.manual_seed(0)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    loss = MatryoshkaEmbeddingLoss([4, 8, 16], [1.0, 2.0, 3.0], info_nce)
    total, per_size = loss(a, b, [0, 2])
    _, every = loss(a, b)
    torch.testing.assert_close(per_size, every[[0, 2]])
    torch.testing.assert_close(total, 1.0 * every[0] + 3.0 * every[2])


def test_sampled_sizes_are_for_text_models_and_at_most_the_nesting_list():
    from mrl.configio import ConfigError

    with pytest.raises(ConfigError, match=r"train.sizes_per_step=2 samples the sizes of the contrastive text loss"):
        from_dict(TrainJobConfig, {"train": {"sizes_per_step": 2}})
    with pytest.raises(ConfigError, match=r"train.sizes_per_step=9 is above the 3 sizes of the nesting list"):
        from_dict(TrainJobConfig, {"data": {"source": "wordnet", "path": "/tmp/x"}, "model": TINY_TEXT_MODEL,
                                   "train": {"sizes_per_step": 9}})
    with pytest.raises(ConfigError, match="sizes_per_step must be >= 0"):
        from_dict(TrainJobConfig, {"train": {"sizes_per_step": -1}})


def test_a_temperature_power_is_for_text_models_and_keeps_every_temperature_at_most_1():
    from mrl.configio import ConfigError

    text = {"data": {"source": "wordnet", "path": "/tmp/x"}, "model": TINY_TEXT_MODEL}
    with pytest.raises(ConfigError, match=r"train.temperature_power=0.5 sets the temperatures of the contrastive "
                                          r"text loss; image models have none"):
        from_dict(TrainJobConfig, {"train": {"temperature_power": 0.5}})
    with pytest.raises(ConfigError, match="temperature_power must be in \\[0, 2\\], got 3"):
        from_dict(TrainJobConfig, {**text, "train": {"temperature_power": 3}})
    sizes = from_dict(TrainJobConfig, text).model.sizes
    with pytest.raises(ConfigError, match=rf"gives size {sizes[0]} the temperature .* it must be at most 1"):
        from_dict(TrainJobConfig, {**text, "train": {"temperature": 0.5, "temperature_power": 2}})
    job = from_dict(TrainJobConfig, {**text, "train": {"temperature": 0.05, "temperature_power": 0.5}})
    assert job.train.temperature_power == 0.5


def test_the_text_objective_trains_each_prefix_at_its_own_temperature(tmp_path):
    """train.temperature_power: the step's loss is the weighted sum of InfoNCE at temperature * (d / m) ** power
    on each normalised prefix of the model's embeddings (power 0: the one temperature)."""
    from mrl.core.losses import info_nce, prefix_temperatures, shrink
    from mrl.core.models import build_model
    from mrl.data.sources import load_text_split
    from mrl.core.tokens import trim_padding
    from mrl.data.tokenize import TextTokenizer, train_tokenizer
    from mrl.stages.objectives import ContrastivePairs

    job = _text_job(tmp_path, temperature=0.05, temperature_power=1.0)
    rows = load_text_split(job.data, "train")
    text = job.model.text
    tokenizer_json = train_tokenizer(rows["query"] + rows["document"], text.vocab_size, text.max_tokens).to_json()
    batch = np.arange(16)
    loss, _ = _loss_and_grads(job, tokenizer_json, batch)
    flat, _ = _loss_and_grads(_text_job(tmp_path, temperature=0.05), tokenizer_json, batch)

    torch.manual_seed(0)
    model = build_model(TINY_TEXT_MODEL).eval()
    objective = ContrastivePairs(job, 0, 1, torch.device("cpu"), TextTokenizer.from_json(tokenizer_json, 32))
    with torch.no_grad():
        z = model(trim_padding(torch.cat([objective.queries[batch], objective.documents[batch]])), embed_only=True)
    sizes = job.model.sizes
    temps = prefix_temperatures(sizes, 0.05, 1.0)
    assert temps[-1] == 0.05 and temps[0] == 0.05 * sizes[-1] / sizes[0]
    expected = sum(w * info_nce(shrink(z[:16], m), shrink(z[16:], m), temperature=t).item()
                   for m, w, t in zip(sizes, job.model.weights, temps))
    assert loss == pytest.approx(expected, rel=1e-5) and abs(loss - flat) > 1e-3
