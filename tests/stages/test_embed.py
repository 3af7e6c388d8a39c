"""The embed stage's units of work (mrl.stages.embed): planning, atomic unit files, verification, a job
killed mid-run that resumes by name with every row written exactly once, and a second run of a running name
refused by its lock (real Ray Data and MLflow)."""

from pathlib import Path

import numpy as np
import pytest

from mrl.stages.embed import embedding_table, plan_units, unit_path, unit_written, verify_split, write_atomically

from conftest import REPO


def test_units_cover_the_rows_once_in_order():
    assert plan_units(10, 4) == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert plan_units(8, 4) == [(0, 0, 4), (1, 4, 8)] and plan_units(0, 4) == []


def test_a_unit_counts_as_written_only_with_exactly_its_ids(tmp_path):
    path = Path(unit_path(tmp_path, 3))
    assert path.name == "part-00003.parquet" and not unit_written(path, np.arange(4))
    write_atomically(embedding_table(np.arange(4, 8), np.zeros(4), np.ones((4, 2), np.float32), "float16"), path)
    assert unit_written(path, np.arange(4, 8))
    assert not unit_written(path, np.arange(4, 9)) and not unit_written(path, np.arange(3, 7))
    assert [p.name for p in tmp_path.iterdir()] == ["part-00003.parquet"]  # no temporary file left behind
    path.write_bytes(b"PAR1 torn")  # a torn file is a unit to write again
    assert not unit_written(path, np.arange(4, 8))


def test_units_in_object_storage_are_written_whole_and_verified_there(s3_server):
    split = s3_server.bucket() + "/run/train"
    table = embedding_table(np.arange(3), np.zeros(3), np.ones((3, 2), np.float32), "float32")
    assert not unit_written(unit_path(split, 0), np.arange(3))
    write_atomically(table, unit_path(split, 0))
    assert unit_written(unit_path(split, 0), np.arange(3)) and s3_server.keys(split) == ["run/train/part-00000.parquet"]
    assert verify_split(split, np.arange(3))["rows"] == 3
    write_atomically(table.slice(1, 1), unit_path(split, 1))
    with pytest.raises(RuntimeError, match="1 duplicate, 0 missing"):
        verify_split(split, np.arange(3))


def test_verification_names_duplicates_and_missing_ids(tmp_path):
    table = embedding_table(np.arange(3), np.zeros(3), np.ones((3, 2), np.float32), "float32")
    write_atomically(table, unit_path(tmp_path, 0))
    assert verify_split(tmp_path, np.arange(3)) == {"rows": 3, "files": 1, "duplicates": 0, "missing": 0}
    with pytest.raises(RuntimeError, match="0 duplicate, 2 missing and 0 unexpected ids"):
        verify_split(tmp_path, np.arange(5))
    write_atomically(table.slice(1, 1), unit_path(tmp_path, 1))
    with pytest.raises(RuntimeError, match="1 duplicate, 0 missing"):
        verify_split(tmp_path, np.arange(3))


def tiny_model_store(tmp_path):
    """The MLflow store an embed job in `tmp_path` uses, holding a tiny CNN registered as models:/tiny/1."""
    import mlflow

    from mrl.artifacts import tracking
    from mrl.config import MlflowConfig
    from mrl.core.models.model import build_model

    tracking.setup(MlflowConfig(), str(tmp_path))  # the store and experiment the job will use
    model = build_model({"encoder": "cnn", "dim": 16, "head": "mrl", "num_classes": 10,
                         "nesting": {"schedule": "list", "sizes": [8, 16]}, "backbone": {"channels": [8, 16]}})
    with mlflow.start_run():
        tracking.log_model(model, "tiny", {"dim": 16, "sizes": [8, 16]})


def start_embed_job(tmp_path, overrides):
    """jobs/embed.py in a process (and session) of its own: it starts its own local Ray."""
    import subprocess
    import sys

    log = open(tmp_path / "embed-job.log", "w")  # a file, not a pipe nobody reads while it runs
    return subprocess.Popen([sys.executable, str(REPO / "jobs" / "embed.py"), "--config",
                             str(REPO / "jobs" / "embed.yaml"), *overrides], cwd=tmp_path, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_for_units(proc, split, n: int, timeout: float = 300, count=None) -> None:
    """Until `n` unit files are in the local directory `split` (or `count()` says so), or the job ended."""
    import time

    count = count or (lambda: len(list(split.glob("part-*.parquet"))))
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and count() < n:
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_embed_job_resumes_against_the_bucket_with_every_row_once(tmp_path, s3_server, monkeypatch):
    """The resume drill with the run in object storage (artifacts_dir on moto's S3 server): the job is killed
    after a few units are uploaded; the rerun leaves those objects as they were (same ETag and time), uploads
    the rest, and the run holds every id once; until then it has no manifest and `latest` names nothing."""
    import os
    import signal

    from mrl import storage
    from mrl.artifacts.embeddings import read_embeddings
    from mrl.config import EmbedJobConfig
    from mrl.configio import load_config
    from mrl.stages.embed import run as run_embed

    monkeypatch.setenv("MRL_CACHE_DIR", str(tmp_path / "cache"))
    tiny_model_store(tmp_path)
    art = s3_server.bucket() + "/art"
    run_dir = f"{art}/embeddings/resumable"
    overrides = [f"output_dir={tmp_path}", f"artifacts_dir={art}", "model_uri=models:/tiny/1", "run_name=resumable",
                 f"data.shards_path={tmp_path}/shards", "embed.splits=[train]", "embed.rows_per_file=500",
                 "embed.augment_rows=20000", "embed.batch_size=250", "data.train_limit=5000", "ray.num_cpus=4"]

    def units() -> dict[str, tuple[str, str]]:
        bucket, _, prefix = f"{run_dir}/train/"[len("s3://"):].partition("/")
        listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return {o["Key"]: (o["ETag"], str(o["LastModified"])) for o in listed if o["Key"].endswith(".parquet")}

    proc = start_embed_job(tmp_path, overrides)  # inherits the endpoint and credentials from the environment
    wait_for_units(proc, None, 3, count=lambda: len(units()))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = units()
    assert 3 <= len(before) < 40, f"{len(before)} of 40 units uploaded when the job was killed"
    assert not storage.exists(f"{run_dir}/manifest.json") and not storage.exists(f"{art}/embeddings/latest")

    result = run_embed(load_config(EmbedJobConfig, REPO / "jobs" / "embed.yaml", overrides))
    after = units()
    assert len(after) == 40 and all(after[key] == stamp for key, stamp in before.items())
    assert result["path"] == run_dir and storage.resolve_latest(f"{art}/embeddings/latest") == run_dir
    ids, _, vectors = read_embeddings(f"{run_dir}/train")  # copied into the cache, checked against the manifest
    assert np.array_equal(ids, np.arange(20000)) and vectors.shape == (20000, 16)
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_a_killed_embed_job_resumes_with_every_row_exactly_once(tmp_path):
    """Kill the embed job (driver and its local Ray) once a few units are written; rerunning the same run_name
    clears the dead job's lock, keeps those files untouched, embeds the rest, and the output holds each of the
    30,000 ids once. Until then the run's directory does not exist: it works in .resumable.partial. A rerun with
    other settings is refused."""
    import os
    import signal

    import pyarrow.parquet as pq

    from mrl.artifacts.embeddings import read_embeddings
    from mrl.config import EmbedJobConfig
    from mrl.configio import load_config
    from mrl.stages.embed import run as run_embed

    tiny_model_store(tmp_path)
    overrides = [f"output_dir={tmp_path}", "model_uri=models:/tiny/1", "run_name=resumable", "embed.splits=[train]",
                 "embed.rows_per_file=500", "embed.augment_rows=30000", "embed.batch_size=250",
                 "data.train_limit=5000", "ray.num_cpus=4"]
    proc = start_embed_job(tmp_path, overrides)
    work = tmp_path / "embeddings" / ".resumable.partial" / "train"
    wait_for_units(proc, work, 3)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in work.glob("part-*.parquet")}
    assert 3 <= len(before) < 60, f"{len(before)} of 60 units written when the job was killed"
    assert not (tmp_path / "embeddings" / "resumable").exists()  # an unfinished run publishes nothing
    assert (tmp_path / "embeddings" / ".resumable.lock").is_file()  # the killed job's lock, stale now

    job = load_config(EmbedJobConfig, REPO / "jobs" / "embed.yaml", overrides)
    result = run_embed(job)
    split = tmp_path / "embeddings" / "resumable" / "train"
    assert not work.parent.exists() and not (tmp_path / "embeddings" / ".resumable.lock").exists()
    after = {p.name: p.stat().st_mtime_ns for p in split.glob("part-*.parquet")}
    assert len(after) == 60 and all(after[name] == mtime for name, mtime in before.items() if name in after)
    assert not list(split.glob(".part-*"))  # temporary files of the killed units are gone
    ids, labels, vectors = read_embeddings(split)
    assert np.array_equal(ids, np.arange(30000))  # 0 missing, 0 duplicated
    base = pq.read_table(split / "part-00000.parquet").column("label").to_numpy()
    assert np.array_equal(labels[:500], base) and np.array_equal(labels[5000:5500], labels[:500])  # id % 5000
    manifest = __import__("json").loads((split.parent / "manifest.json").read_text())
    assert manifest["verified"]["train"] == {"rows": 30000, "files": 60, "duplicates": 0, "missing": 0}
    assert result["rows"] == {"train": 30000} and vectors.shape == (30000, 16)

    with pytest.raises(ValueError, match="started with other settings \\(dtype differ\\)"):
        run_embed(load_config(EmbedJobConfig, REPO / "jobs" / "embed.yaml", [*overrides, "embed.dtype=float16"]))
    again = run_embed(job)  # the finished run asked for again: verified and left as it is
    assert again["rows"] == {"train": 30000} and {p.name: p.stat().st_mtime_ns for p in split.glob("*")} == after
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_a_second_run_of_a_running_name_is_refused_and_the_first_finishes_intact(tmp_path):
    """Two embed jobs with one run_name: while the first (its own process and Ray) is writing units, the second
    fails at once, naming the lock file and how to clear a stale one, before touching anything; the first then
    finishes with every row once, its files verified against its manifest, and releases the lock."""
    from mrl.artifacts.embeddings import read_embeddings
    from mrl.artifacts.files import LockedError
    from mrl.config import EmbedJobConfig
    from mrl.configio import load_config
    from mrl.stages.embed import run as run_embed

    tiny_model_store(tmp_path)
    overrides = [f"output_dir={tmp_path}", "model_uri=models:/tiny/1", "run_name=shared", "embed.splits=[train]",
                 "embed.rows_per_file=400", "embed.augment_rows=12000", "embed.batch_size=200",
                 "data.train_limit=1000", "ray.num_cpus=4"]
    first = start_embed_job(tmp_path, overrides)
    work = tmp_path / "embeddings" / ".shared.partial" / "train"
    lock = tmp_path / "embeddings" / ".shared.lock"
    wait_for_units(first, work, 1)
    assert first.poll() is None and len(list(work.glob("part-*.parquet"))) < 30, "the first run was not running"
    written = sorted(work.glob("*"))
    with pytest.raises(LockedError, match=(f"embed run 'shared' is already running: the lock {lock} is held by "
                                            f"pid {first.pid} on host .*rm '{lock}'")):
        run_embed(load_config(EmbedJobConfig, REPO / "jobs" / "embed.yaml", overrides))
    assert set(written) <= set(work.glob("*"))  # nothing of the first run's was removed
    assert first.wait(timeout=600) == 0, (tmp_path / "embed-job.log").read_text()[-3000:]
    ids, _, vectors = read_embeddings(tmp_path / "embeddings" / "shared" / "train")  # every file verified
    assert np.array_equal(ids, np.arange(12000)) and vectors.shape == (12000, 16)
    assert not lock.exists() and not work.parent.exists()


@pytest.mark.slow
def test_the_embed_benchmark_runs_the_stage_and_the_plain_loop_on_the_same_rows(tmp_path):
    import pyarrow.parquet as pq

    from mrl.artifacts import tracking
    from mrl.artifacts.embeddings import read_embedding_files, read_embeddings
    from mrl.config import MlflowConfig
    from mrl.core.models.model import build_model
    from mrlbench.embed_bench import render, run

    tracking.setup(MlflowConfig(), str(tmp_path))
    import mlflow

    model = build_model({"encoder": "cnn", "dim": 16, "head": "mrl", "num_classes": 10,
                         "nesting": {"schedule": "list", "sizes": [8, 16]}, "backbone": {"channels": [8, 16]}})
    with mlflow.start_run():
        tracking.log_model(model, "tiny", {"dim": 16, "sizes": [8, 16]})
    result = run(REPO, tmp_path, "models:/tiny/1", {"small": None, "grown": 3000}, batch_size=200,
                 rows_per_file=500, actors=2, train_limit=1000)
    small, grown = result["results"]
    assert (small["rows"], grown["rows"]) == (1000, 3000) and grown["verified"]["missing"] == 0
    assert all(r["stage_seconds"] > 0 and r["plain_seconds"] > 0 and r["driver_peak_rss"] > 2**20
               and r["actor_peak_rss"] > 2**20 for r in (small, grown))
    # the plain loop wrote the very rows the stage wrote
    stage_ids, _, stage_z = read_embeddings(next((tmp_path / "embeddings").glob("bench-grown-*")) / "train")
    plain = sorted(next((tmp_path / "embed_bench_plain").glob("grown-*")).glob("*.parquet"))
    plain_ids = np.concatenate([pq.read_table(f, columns=["id"]).column("id").to_numpy() for f in plain])
    assert np.array_equal(stage_ids, np.sort(plain_ids))
    _, _, plain_z = read_embedding_files(plain)  # the plain loop's files: no manifest vouches for them
    np.testing.assert_allclose(stage_z, plain_z, rtol=1e-5, atol=1e-6)
    text = render(result, "cmd")
    assert "| grown | 3,000 |" in text and "Peak RSS, 3,000 rows against 1,000" in text


def test_data_with_repeated_ids_is_refused_before_embedding(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mrl.config import DataConfig
    from mrl.stages.embed import _split_ids

    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"id": pa.array([4, 9, 4], pa.int64()), "label": pa.array([0, 1, 0], pa.int64()),
                             "image": pa.array([[0] * 4] * 3, pa.list_(pa.uint8()))}), tmp_path / "train" / "a.parquet")
    spec = {"encoder": "cnn", "in_channels": 1, "image_size": 2}
    with pytest.raises(ValueError, match="1 ids of the train split appear more than once"):
        _split_ids(DataConfig(source="parquet", path=str(tmp_path)), spec, "train")


def test_a_run_directory_of_the_old_in_place_layout_is_refused_naming_what_to_do(tmp_path):
    """Before runs worked in .<name>.partial, a named run wrote its units straight into <name>/: one interrupted
    there has plan.json but no manifest (older ones no plan.json either). Asking for that name again must say
    so, naming the directory and the missing file, instead of failing with a bare FileNotFoundError."""
    import json
    import re

    from mrl.stages.embed import _finished

    plan = {"model_uri": "models:/tiny/1", "splits": ["train"], "rows_per_unit": 4}
    out = tmp_path / "embeddings" / "nightly"
    (out / "train").mkdir(parents=True)
    write_atomically(embedding_table(np.arange(4), np.zeros(4), np.ones((4, 2), np.float32), "float32"),
                     unit_path(out / "train", 0))
    (out / "plan.json").write_text(json.dumps(plan))
    for missing in (out / "manifest.json", out / "plan.json"):
        with pytest.raises(ValueError, match=re.escape(f"embed run directory {out} has no {missing.name} ({missing})")
                           + r".* earlier version .* cannot be resumed or reused\. Pick a new run_name, or move "
                           + re.escape(f"{out} out of the way")):
            _finished(out, plan)
        (out / "plan.json").unlink(missing_ok=True)  # the older layout: not even a plan
    assert (out / "train" / "part-00000.parquet").is_file()  # left as it was


def test_a_finished_run_asked_for_again_is_verified_and_other_settings_are_refused(tmp_path):
    import json

    from mrl.artifacts.embeddings import embedding_files
    from mrl.artifacts.manifest import write_manifest
    from mrl.stages.embed import _finished

    plan = {"model_uri": "models:/tiny/1", "splits": ["train"], "rows_per_unit": 4}
    out = tmp_path / "nightly"
    (out / "train").mkdir(parents=True)
    write_atomically(embedding_table(np.arange(4), np.zeros(4), np.ones((4, 2), np.float32), "float32"),
                     unit_path(out / "train", 0))
    (out / "plan.json").write_text(json.dumps(plan))
    write_manifest(out, {"stage": "embed", "embed_run_id": "r1", "rows": {"train": 4},
                         "files": embedding_files(out, ["train"])})
    assert _finished(out, plan)["embed_run_id"] == "r1"
    with pytest.raises(ValueError, match=r"^embed run directory .* was started with other settings \(rows_per_unit"):
        _finished(out, {**plan, "rows_per_unit": 8})
    (out / "train" / "part-00000.parquet").write_bytes(b"changed")
    with pytest.raises(ValueError, match="is finished but cannot be reused .*does not match its manifest checksum"):
        _finished(out, plan)
