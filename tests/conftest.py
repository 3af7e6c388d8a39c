"""Shared fixtures. Integration tests use real Ray (local), real MLflow (sqlite in a temp dir), real FAISS
and real Ray Serve over HTTP on 127.0.0.1."""

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def repo() -> Path:
    return REPO


class S3Server:
    """A real S3 HTTP API on 127.0.0.1 (moto in server mode, its own process: `mrlbench.local_s3`): what the
    platform's object-storage paths are tested against, no AWS account existing here. `bucket()` makes a fresh
    bucket and returns its s3:// URI."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.made = 0

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)  # credentials: the environment `local_s3` set

    def bucket(self) -> str:
        self.made += 1
        name = f"mrl-test-{os.getpid()}-{self.made}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, uri: str) -> list[str]:
        """Every object key under an s3:// URI."""
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server():
    """The session's S3 server (moto), with this process's environment pointed at it (workers of a Ray cluster
    started afterwards inherit it)."""
    from mrlbench.local_s3 import local_s3

    with local_s3() as endpoint:
        yield S3Server(endpoint)


def run_isolated(code: str, timeout: float = 300) -> str:
    """Run `code` (a Python script that starts and stops its own local Ray) in a fresh interpreter and return its
    stdout; an exception there fails the caller. Ray Data keeps per-process state across `ray.shutdown()`: a
    second cluster in the same process then loses its actor pools ("actor creation cancelled"), so tests that
    use Ray Data against a short-lived local cluster of their own run it in a process of its own."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def submit_train_job(client, out: Path, run_name: str, timeout: float = 600) -> str:
    """Submit a small `jobs/train.py` run (1,200 Fashion-MNIST images, one epoch) with a JobSubmissionClient, wait
    for it, and check that it succeeded and registered version 1 of its model; returns the job's logs."""
    import sys
    import time

    from mlflow import MlflowClient
    from ray.job_submission import JobStatus

    entrypoint = (f"{sys.executable} jobs/train.py --config jobs/train.yaml output_dir={out} run_name={run_name} "
                  "data.train_limit=1200 train.epochs=1 model.dim=32 resources.num_workers=1")
    job_id = client.submit_job(entrypoint=entrypoint,
                               runtime_env={"working_dir": str(REPO), "excludes": ["outputs/", ".git/"]})
    deadline = time.time() + timeout
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.time() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "registered models:/mrl-fashion-mnist/1" in logs
    versions = MlflowClient(f"sqlite:///{out}/mlflow.db").search_model_versions("name='mrl-fashion-mnist'")
    assert [str(v.version) for v in versions] == ["1"]
    assert (Path(out) / "ray" / run_name).is_dir()  # Ray Train's storage for the run
    return logs


def tiny_text_model(texts: list[str], dim: int = 16, seed: int = 0):
    """A one-layer BERT text model (d = dim, sizes [4, dim]) with a tokenizer trained on `texts`, in eval mode."""
    import torch

    from mrl.core.models import build_model
    from mrl.data.tokenize import train_tokenizer

    torch.manual_seed(seed)
    model = build_model({"encoder": "bert", "dim": dim, "head": "none",
                         "nesting": {"schedule": "list", "sizes": [4, dim]}, "text": {"vocab_size": 300, "max_tokens": 16},
                         "backbone": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "intermediate_size": 32}}).eval()
    model.tokenizer = train_tokenizer(texts, 300, 16)
    return model


def tiny_image_index(directory: Path, rows: int, nesting: tuple[int, ...] = (4, 16)):
    """A saved compact-CNN model (d = 16, seeded) and a flat index of its embeddings of `rows` seeded random 28x28
    images at sizes [4, 16], under `directory`: (model_dir, images (rows, 1, 28, 28) uint8, vectors, index_dir)."""
    import numpy as np
    import torch

    from mrl.artifacts.index import write_index
    from mrl.artifacts.model_files import save_model_dir
    from mrl.core.models import build_model
    from mrl.data.preprocess import embed_images

    torch.manual_seed(0)
    model = build_model({"encoder": "cnn", "dim": 16, "nesting": {"schedule": "list", "sizes": list(nesting)},
                         "backbone": {"channels": [4, 8]}}).eval()
    model_dir = save_model_dir(model, directory / "model")
    images = np.random.default_rng(0).integers(0, 256, size=(rows, 1, 28, 28), dtype=np.uint8)
    vectors = embed_images(model, images)
    write_index(directory / "index", np.arange(rows), np.zeros(rows, dtype=np.int64), vectors, [4, 16], "flat",
                {"model_uri": str(model_dir)})
    return model_dir, images, vectors, directory / "index"


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header for a width x height grayscale image followed by an almost empty image stream: a few
    dozen bytes that announce width x height pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
