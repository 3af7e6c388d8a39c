"""`mrl lineage` over a real chain (mrl.artifacts.lineage, through the CLI): a service behind an API key (a real
HTTP server answering /healthz as the service does: details for the key's holders, only "ok" to anyone else), an
index written by `write_index`, an embeddings directory from before manifests listed files (format 1), a model
version in a real MLflow registry and the training data the training run digested. The same chain from a
pipeline's real service: tests/e2e/test_stages.py."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from mrl.artifacts import tracking
from mrl.artifacts.datasets import digest_cache
from mrl.artifacts.index import write_index
from mrl.artifacts.lineage import trace
from mrl.cli import main
from mrl.config import MlflowConfig

KEY = "k" * 24
ENV = "MRL_TEST_LINEAGE_KEY"


def healthz_server(details: dict):
    """A /healthz like the keyed service's: `details` for `Authorization: Bearer KEY`, {"status": "ok"} else."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = details if self.headers.get("Authorization") == f"Bearer {KEY}" else {"status": "ok"}
            payload = json.dumps(body).encode() if self.path == "/healthz" else b"{}"
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def chain(tmp_path):
    """(output_dir, service URL, training data directory): every link recorded, the data digested at training
    time with the file-digest cache filled (the files settled: an old mtime)."""
    import mlflow
    from mlflow import MlflowClient

    out, data = tmp_path / "out", tmp_path / "data" / "train"
    data.mkdir(parents=True)
    for name, content in [("part-0.parquet", b"first shard"), ("part-1.parquet", b"second shard")]:
        (data / name).write_bytes(content)
        os.utime(data / name, ns=(10**18, 10**18))
    uri = tracking.setup(MlflowConfig(), str(out))
    with mlflow.start_run() as train:
        tracking.log_dataset("parquet-train", data, digest_cache(out))
    client = MlflowClient(uri)
    client.create_registered_model("tiny")
    client.create_model_version("tiny", f"runs:/{train.info.run_id}/model", run_id=train.info.run_id)
    with mlflow.start_run() as embed, mlflow.start_run(nested=True) as index:
        pass
    emb = out / "embeddings" / "old"
    emb.mkdir(parents=True)
    (emb / "manifest.json").write_text(json.dumps({  # as the embed stage wrote it before format 2: no "files"
        "stage": "embed", "format_version": 1, "embed_run_id": embed.info.run_id, "model_uri": "models:/tiny/1",
        "dim": 8, "sizes": [4, 8], "rows": {"train": 20}}))
    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    write_index(out / "index" / "i", np.arange(20), np.arange(20) % 3, vectors, [4, 8], "flat",
                {"embeddings": str(emb), "index_run_id": index.info.run_id})
    server = healthz_server({"status": "ok", "index": {"version": "i", "path": str(out / "index" / "i")},
                             "model": {"uri": "models:/tiny/1"}})
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with mlflow.start_run():
        mlflow.set_tag(tracking.TAG_URL, url)
    yield out, url, data
    server.shutdown()
    server.server_close()


def lineage(out, *args) -> int:
    return main(["lineage", f"output_dir={out}", *args])


def test_a_keyed_service_is_traced_with_its_key_and_reported_clearly_without(chain, capsys, monkeypatch):
    from mlflow import MlflowClient

    out, url, _ = chain
    links = trace(url, MlflowClient(tracking.resolve_tracking_uri(MlflowConfig(), str(out))))
    assert [link.kind for link in links] == ["deployment"]
    assert links[0].problem.startswith("the service withholds its details without the API key: give api_key_env=")
    assert lineage(out, f"target={url}") == 1
    printed = capsys.readouterr()
    assert "BROKEN: the service withholds its details without the API key" in printed.out, printed

    monkeypatch.setenv(ENV, KEY)
    assert lineage(out, f"target={url}", f"api_key_env={ENV}") == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert sorted(lines) == ["dataset", "deployment", "embeddings", "index", "model", "training"], lines
    assert "index version i" in lines["deployment"] and "[ok]" in lines["index"]
    assert "files verified not verified (format 1" in lines["embeddings"] and "[ok]" in lines["embeddings"]
    assert "content verified, 2 files" in lines["dataset"]

    monkeypatch.setenv(ENV, "another key of 24 chars")
    assert lineage(out, f"target={url}", f"api_key_env={ENV}") == 1
    assert "withholds its details from the API key given" in capsys.readouterr().out
    monkeypatch.delenv(ENV)
    assert lineage(out, f"target={url}", f"api_key_env={ENV}") == 2
    assert f"api_key_env names {ENV}, which is not set" in capsys.readouterr().err


def test_data_replaced_with_its_size_and_mtime_kept_breaks_the_dataset_link(chain, capsys):
    """`cp -p` over a shard: same size, mtime restored. The file-digest cache filled at training time must not
    vouch for it: lineage reads the data again (and with rehash=false the cache's inode/ctime key misses)."""
    out, _, data = chain
    target = "models:/tiny/1"
    assert lineage(out, f"target={target}") == 0
    capsys.readouterr()
    shard = data / "part-1.parquet"
    stamp = shard.stat().st_mtime_ns
    shard.write_bytes(b"SECOND SHARD")
    os.utime(shard, ns=(stamp, stamp))
    for rehash in ([], ["rehash=false"]):
        assert lineage(out, f"target={target}", *rehash) == 1
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dataset"))
        assert f"BROKEN: the training data at {data} changed since training run" in line
        assert "1 changed (part-1.parquet)" in line


def test_a_sharded_index_lists_its_shards_and_verifies_their_files(chain, capsys):
    """A sharded index's link names its shards (rows, id ranges) and verifies every shard's files; a shard file
    changed afterwards breaks the index link, naming the file."""
    from mrl.artifacts.index import write_sharded_index
    from mrl.artifacts.manifest import read_manifest

    out, _, _ = chain
    whole = read_manifest(out / "index" / "i", stage="index")
    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    write_sharded_index(out / "index" / "s", np.arange(20), np.arange(20) % 3, vectors, [4, 8], "flat",
                        {"embeddings": whole["embeddings"], "index_run_id": whole["index_run_id"]}, shards=2,
                        by="range")
    assert lineage(out, f"target={out / 'index' / 's'}") == 0
    shown = capsys.readouterr().out
    assert "2 by range: shard-000 10 rows ids 0..9, shard-001 10 rows ids 10..19" in shown
    assert "files verified 10" in shown  # vectors, ids, labels and an index per size in each shard
    (out / "index" / "s" / "shard-001" / "labels.npy").write_bytes(b"changed")
    assert lineage(out, f"target={out / 'index' / 's'}") != 0
    assert "shard-001/labels.npy does not match its manifest checksum" in capsys.readouterr().out
