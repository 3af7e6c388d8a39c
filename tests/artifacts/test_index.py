"""The index artifact (mrl.artifacts.index): float16 / float32 rerank vectors, manifest and format checks,
AdANNS cells, and the engine over it."""

import json
import re

import numpy as np
import pytest

from mrl.artifacts.index import IndexMismatchError, load_index, write_index
from mrl.artifacts.manifest import sha256, write_manifest
from mrl.retrieval.modes import SearchSettings, make_plan
from mrl.retrieval.topk import exact_search


def corpus(n=500, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(n) * 10, rng.integers(0, 5, n), rng.normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_written_index_loads_and_searches_like_numpy(tmp_path, dtype):
    ids, labels, vectors = corpus()
    manifest = write_index(tmp_path, ids, labels, vectors, [8, 32], "flat", {"model_uri": "models:/m/1"},
                           vector_dtype=dtype)
    assert manifest["dtype"] == dtype and manifest["rows"] == 500 and set(manifest["checksums"]) >= {"vectors.npy"}
    art = load_index(tmp_path, expect_dim=32, expect_model_uri="models:/m/1")
    assert art.vectors.dtype == np.dtype(dtype) and art.engine.source_sizes() == {"size_8": 8, "size_32": 32}
    q = np.random.default_rng(1).normal(size=(20, 32)).astype(np.float32)
    pos = art.engine.run(make_plan("adaptive", SearchSettings(shortlist_size=8, shortlist_k=500), 32, 10), q).positions
    _, exact = exact_search(vectors.astype(dtype).astype(np.float32), q, 10)
    assert pos.tolist() == exact.tolist()  # a shortlist of everything reranked exactly = exact search


def test_float16_halves_the_vector_file(tmp_path):
    ids, labels, vectors = corpus(n=2000, d=64)
    write_index(tmp_path / "a", ids, labels, vectors, [8], "flat", {}, vector_dtype="float32")
    write_index(tmp_path / "b", ids, labels, vectors, [8], "flat", {}, vector_dtype="float16")
    a, b = (tmp_path / "a" / "vectors.npy").stat().st_size, (tmp_path / "b" / "vectors.npy").stat().st_size
    assert b < 0.51 * a


def test_manifest_dtype_and_size_mismatches_are_refused(tmp_path):
    ids, labels, vectors = corpus()
    write_index(tmp_path, ids, labels, vectors, [8], "flat", {}, vector_dtype="float16")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["dtype"] = "float32"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="vectors.npy holds float16, the manifest says float32"):
        load_index(tmp_path)
    with pytest.raises(IndexMismatchError, match="outside \\[1, d=32\\]"):
        write_index(tmp_path / "x", ids, labels, vectors, [8, 64], "flat", {})


def test_sha256_matches_hashlib(tmp_path):
    import hashlib

    (tmp_path / "f").write_bytes(b"mrl" * 1000)
    assert sha256(tmp_path / "f") == hashlib.sha256(b"mrl" * 1000).hexdigest()


def test_index_stores_adanns_cells(tmp_path):
    ids, labels, vectors = corpus(n=400, d=32)
    manifest = write_index(tmp_path, ids, labels, vectors, [8, 16], "flat", {}, vector_dtype="float16",
                           adanns=(8, 10))
    assert manifest["adanns"] == {"size": 8, "nlist": 10} and "adanns.npz" in manifest["checksums"]
    art = load_index(tmp_path)
    assert art.engine.store.vectors.dtype == np.float16 and len(art.engine) == 400
    cells = art.engine.sources["adanns"].cells
    assert cells.cluster_size == 8 and cells.nlist == 10
    assert sorted(cells.members.tolist()) == list(range(400))  # every row in exactly one cell
    q = np.random.default_rng(2).normal(size=(5, 32)).astype(np.float32)
    plan = make_plan("adanns", SearchSettings(shortlist_size=32, shortlist_k=400, nprobe=10), 32, 10)
    pos = art.engine.run(plan, q).positions  # all cells probed: every row is scored at 32 dims
    _, exact = exact_search(vectors.astype(np.float16).astype(np.float32), q, 10)
    assert pos.tolist() == exact.tolist()
    np.savez(tmp_path / "adanns.npz", cluster_size=np.int64(8), centroids=np.zeros((10, 8)),
             offsets=np.zeros(11, dtype=np.int64), members=np.zeros(0, dtype=np.int64))
    with pytest.raises(IndexMismatchError, match="adanns.npz does not match its manifest checksum"):
        load_index(tmp_path)


def test_adanns_cells_outside_d_are_refused(tmp_path):
    ids, labels, vectors = corpus(n=100, d=16)
    with pytest.raises(IndexMismatchError, match="adanns_size 32 is outside"):
        write_index(tmp_path, ids, labels, vectors, [8], "flat", {}, adanns=(32, 4))
    assert not (tmp_path / "size_8.faiss").exists()  # refused before any index was built


def test_format_version_and_stage_are_checked(tmp_path):
    ids, labels, vectors = corpus(n=100, d=16)
    manifest = write_index(tmp_path, ids, labels, vectors, [8], "flat", {})
    assert manifest["format_version"] == 1
    manifest["format_version"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="format version 2 index artifact; this platform reads version 1"):
        load_index(tmp_path)
    manifest.update(format_version=1, stage="embed")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="holds a 'embed' manifest, not an 'index' one"):
        load_index(tmp_path)


def test_index_config_rules_are_checked_before_any_build(tmp_path):
    from mrl.artifacts.index import check_index_config
    from mrl.config import IndexConfig

    assert check_index_config(IndexConfig(), 64, [8, 16, 64]) == [8, 16, 64]
    with pytest.raises(IndexMismatchError, match=r"index.sizes \[8, 128\] go above d=64"):
        check_index_config(IndexConfig(sizes=(8, 128)), 64, [8])
    with pytest.raises(IndexMismatchError, match="pq_m=16 does not divide 24"):
        check_index_config(IndexConfig(kind="ivfpq", pq_m=16), 64, [16, 24])
    with pytest.raises(IndexMismatchError, match=r"index.adanns_size 128 is outside \[1, d=64\]"):
        check_index_config(IndexConfig(adanns_size=128), 64, [8])


def test_per_size_graph_settings_reach_each_index(tmp_path):
    """index.per_size gives the 32-d graph its own degree, search breadth and float16 storage; the 8-d graph
    keeps the defaults; both are written, read back and searched with their own settings."""
    import faiss

    from mrl.artifacts.index import check_index_config
    from mrl.config import IndexConfig
    from mrl.configio import ConfigError, from_dict

    cfg = from_dict(IndexConfig, {"kind": "hnsw", "hnsw_m": 12, "ef_search": 20, "per_size": [
        {"size": 32, "hnsw_m": 6, "ef_search": 48, "storage": "float16", "ef_construction": 30}]})
    ids, labels, vectors = corpus(n=800)
    sizes = check_index_config(cfg, 32, [8, 32])
    manifest = write_index(tmp_path, ids, labels, vectors, sizes, "hnsw", {}, {m: cfg.params(m) for m in sizes})
    assert manifest["params"]["32"]["hnsw_m"] == 6 and manifest["params"]["8"]["hnsw_m"] == 12
    art = load_index(tmp_path)
    small, big = (faiss.downcast_index(art.engine.sources[f"size_{m}"].index) for m in (8, 32))
    assert isinstance(small, faiss.IndexHNSWFlat) and isinstance(big, faiss.IndexHNSWSQ)
    assert (small.hnsw.efSearch, big.hnsw.efSearch) == (20, 48)
    assert (small.hnsw.nb_neighbors(0), big.hnsw.nb_neighbors(0)) == (24, 12)  # level 0 holds 2 M links
    assert big.hnsw.efConstruction == 30
    q = np.random.default_rng(2).normal(size=(5, 32)).astype(np.float32)
    found = art.engine.run(make_plan("full", SearchSettings(), 32, 5), q).positions
    _, exact = exact_search(vectors, q, 5)
    assert np.mean([np.isin(e, f).mean() for e, f in zip(exact, found)]) >= 0.8  # a float16 graph finds them
    with pytest.raises(IndexMismatchError, match=r"index.per_size sets sizes \[16\], which are not indexed"):
        check_index_config(from_dict(IndexConfig, {"per_size": [{"size": 16, "hnsw_m": 4}]}), 32, [8, 32])
    with pytest.raises(ConfigError, match="per_size lists a size more than once"):
        from_dict(IndexConfig, {"per_size": [{"size": 8}, {"size": 8}]})
    with pytest.raises(ConfigError, match="storage"):
        from_dict(IndexConfig, {"per_size": [{"size": 8, "storage": "bfloat16"}]})
    with pytest.raises(ConfigError, match="per_size sets sizes \\[16\\], which are not in sizes"):
        from_dict(IndexConfig, {"sizes": [8], "per_size": [{"size": 16}]})


def rewrite_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("verify", [True, False])
def test_a_file_the_loader_opens_must_be_listed_in_the_manifest(tmp_path, verify):
    """The manifest vouches for every file load_index opens: one it does not list is refused, checksums or not."""
    ids, labels, vectors = corpus(n=100, d=16)
    write_index(tmp_path, ids, labels, vectors, [8, 16], "flat", {}, adanns=(8, 4))
    assert set(json.loads((tmp_path / "manifest.json").read_text())["checksums"]) == {
        "vectors.npy", "ids.npy", "labels.npy", "size_8.faiss", "size_16.faiss", "adanns.npz"}
    for name in ("size_16.faiss", "adanns.npz", "labels.npy"):
        rewrite_manifest(tmp_path, lambda m: m["checksums"].pop(name))
        with pytest.raises(IndexMismatchError, match=f"{name} is not listed in the manifest"):
            load_index(tmp_path, verify=verify)
        rewrite_manifest(tmp_path, lambda m: m["checksums"].update({name: sha256(tmp_path / name)}))
    load_index(tmp_path, verify=verify)


@pytest.mark.parametrize("name", ["../outside.npy", "/tmp/outside.npy", "sub/x.npy", "..", "."])
def test_a_manifest_naming_a_path_is_refused_naming_it(tmp_path, name):
    """Names are plain file names of the index directory: '../x', absolute paths and separators are refused,
    even when the file they point at exists and matches the checksum."""
    ids, labels, vectors = corpus(n=100, d=16)
    write_index(tmp_path / "ix", ids, labels, vectors, [8], "flat", {})
    (tmp_path / "outside.npy").write_bytes(b"not the index's")
    rewrite_manifest(tmp_path / "ix", lambda m: m["checksums"].update({name: sha256(tmp_path / "outside.npy")}))
    with pytest.raises(IndexMismatchError, match=f"lists the file {re.escape(repr(name))}: a manifest lists plain"):
        load_index(tmp_path / "ix")
    with pytest.raises(ValueError, match="plain file names"):
        write_manifest(tmp_path / "ix", {"stage": "index", "checksums": {name: "0" * 64}})


def test_an_index_directory_appears_whole_or_not_at_all(tmp_path):
    """Written under a temporary sibling and renamed: a write that fails midway (ids that are not integers, found
    after the vectors were saved) leaves neither the directory nor a temporary one; a finished directory is never
    written over."""
    ids, labels, vectors = corpus(n=50, d=16)
    with pytest.raises(ValueError, match="invalid literal"):
        write_index(tmp_path / "ix", np.array(["x"] * 50), labels, vectors, [8], "flat", {})
    assert list(tmp_path.iterdir()) == []
    write_index(tmp_path / "ix", ids, labels, vectors, [8], "flat", {})
    assert [p.name for p in tmp_path.iterdir()] == ["ix"]
    before = (tmp_path / "ix" / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        write_index(tmp_path / "ix", ids, labels, vectors * 2, [8], "flat", {})
    assert (tmp_path / "ix" / "manifest.json").read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ix"]


def test_a_binary_index_with_codes_round_trips_and_its_code_files_are_checked(tmp_path):
    ids, labels, vectors = corpus(n=400, d=32)
    manifest = write_index(tmp_path / "lean", ids, labels, vectors, [16], "binary_hnsw", {},
                           codes=[(32, "binary"), (16, "int8")])
    assert manifest["codes"] == [[32, "binary"], [16, "int8"]]
    assert {"binary_32.npy", "int8_16.npy", "int8_16_scale.npy"} <= set(manifest["checksums"])
    artifact = load_index(tmp_path / "lean")
    assert artifact.engine.code_keys() == [("binary", 32), ("int8", 16)]
    assert artifact.engine.store.mapped  # the full vectors stay a memory map
    plan = make_plan("funnel", SearchSettings(shortlist_size=16, shortlist_k=400, ef_search=400,
                                              funnel=((32, 400, "binary"), (16, 400, "int8"), (None, 10))), 32, 10)
    found = artifact.engine.run(plan, vectors[:5])
    _, exact = exact_search(vectors, vectors[:5], 10)
    assert np.array_equal(found.positions, exact)  # every row shortlisted and kept: the float stage decides
    codes = np.load(tmp_path / "lean" / "int8_16.npy")
    codes[0, 0] ^= 1
    np.save(tmp_path / "lean" / "int8_16.npy", codes)
    with pytest.raises(IndexMismatchError, match="int8_16.npy"):
        load_index(tmp_path / "lean")
