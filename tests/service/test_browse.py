"""What the search page needs beside the search, without Ray or HTTP (mrl.service.browse and
`RetrievalService.item` / `calibration`): items read from the data the index's lineage names (pixels as the readers
give them, augmented rows rebuilt, text rows), 404 for ids not in the index, 503 naming why when the data cannot
be read, and the page's static files. The same routes over real HTTP, with the key, and the page in a real
browser: tests/e2e/test_search_page.py."""

import fnmatch
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from mrl.artifacts.index import write_index
from mrl.artifacts.manifest import read_manifest, write_manifest
from mrl.config import ServeConfig
from mrl.configio import to_dict
from mrl.data.augment import augment
from mrl.data.config import DataConfig
from mrl.data.readers import image_table
from mrl.data.sources import open_split
from mrl.retrieval.modes import SearchSettings
from mrl.service.browse import PAGE_FILES, page_asset
from mrl.service.retrieval import RequestError, RetrievalService

from conftest import REPO

N, D = 60, 16
SETTINGS = ServeConfig(search=SearchSettings(shortlist_size=8, rerank_size=16))


def write_images(root, images, labels, ids=None, shards=2):
    """A `parquet` image source: <root>/train/part-<i>.parquet (with an id column when `ids` is given)."""
    import pyarrow.parquet as pq

    (root / "train").mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(images)), shards)):
        table = image_table(images[part], labels[part], part if ids is None else ids[part])
        if ids is None:
            table = table.drop_columns(["id"])  # ids are then the rows' positions
        pq.write_table(table, root / "train" / f"part-{i}.parquet", row_group_size=16)


def write_lineage(tmp, data, ids, labels, augment_cfg=None, calibration=None):
    """An embed manifest as the embed stage writes it (its data config, the model's image shape, augmentation)
    and an index over random vectors that names it; returns the service over that index."""
    emb = tmp / "embeddings"
    emb.mkdir()
    write_manifest(emb, {"stage": "embed", "embed_run_id": "e1", "model_uri": None, "dim": D, "sizes": [8, 16],
                         "model_spec": {"encoder": "cnn", "in_channels": 1, "image_size": 28},
                         "rows": {"train": len(ids)}, "augment": augment_cfg, "data": to_dict(data)})
    vectors = np.random.default_rng(0).normal(size=(len(ids), D)).astype(np.float32)
    extra = {"embeddings": str(emb), "modality": data.modality, "index_run_id": "i1"}
    if calibration is not None:
        extra["calibration"] = calibration
    write_index(tmp / "index", ids, labels, vectors, [8, 16], "flat", extra)
    return RetrievalService.from_path(str(tmp / "index"), SETTINGS)


def decode_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


@pytest.fixture(scope="module")
def image_corpus(tmp_path_factory):
    """60 random 28x28 images in two shards with ids 1000 + 3i (not their positions) and labels i % 4."""
    tmp = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(N, 1, 28, 28), dtype=np.uint8)
    ids, labels = 1000 + 3 * np.arange(N), np.arange(N) % 4
    write_images(tmp / "data", images, labels, ids)
    data = DataConfig(source="parquet", path=str(tmp / "data"))
    return write_lineage(tmp, data, ids, labels), images, ids, data


def test_an_image_item_is_the_png_of_the_readers_pixels(image_corpus):
    service, images, ids, data = image_corpus
    reader = open_split(data, (1, 28, 28), "train")
    for position in (0, 29, 30, N - 1):  # both shards, their first and last rows
        item = service.item(int(ids[position]))
        assert item["id"] == ids[position] and item["label"] == position % 4
        pixels = decode_png(item["png"])
        assert pixels.shape == (28, 28) and np.array_equal(pixels, images[position, 0])
        read = reader.read(position, position + 1).column("image").combine_chunks().flatten().to_numpy()
        assert np.array_equal(pixels.ravel(), read)  # what the embed stage's reader gives for that row


@pytest.mark.parametrize("item_id", [0, 1001, 999, -3, 1000 + 3 * N, 2**63, -2**70])
def test_an_id_not_in_the_index_is_a_404_naming_it(image_corpus, item_id):
    service = image_corpus[0]
    with pytest.raises(RequestError) as err:
        service.item(item_id)
    assert err.value.status == 404 and f"id {item_id} is not in the corpus ({N} items)" in err.value.detail


def test_augmented_rows_are_rebuilt_from_their_base_row_and_seed(tmp_path):
    """An index over a train split grown by augmentation (embed.augment_rows): id i >= n is base row i % n
    augmented with the embed run's seed, exactly as the embed stage made it; ids below n are the originals."""
    n = 20
    images = np.random.default_rng(2).integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 3
    write_images(tmp_path / "data", images, labels, shards=1)
    data = DataConfig(source="parquet", path=str(tmp_path / "data"))
    service = write_lineage(tmp_path, data, np.arange(3 * n), np.tile(labels, 3), {"rows": 3 * n, "seed": 7})
    assert np.array_equal(decode_png(service.item(4)["png"]), images[4, 0])
    for item_id in (n + 4, 2 * n + 4, 3 * n - 1):
        want = augment(images[[item_id % n]], np.array([item_id]), 7, n)[0, 0]
        got = decode_png(service.item(item_id)["png"])
        assert np.array_equal(got, want) and service.item(item_id)["label"] == labels[item_id % n]
    assert not np.array_equal(decode_png(service.item(n + 4)["png"]), images[4, 0])  # augmented, not a copy


def test_a_text_item_is_its_document(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.arange(12) * 10 + 5
    docs = [f"document number {i} about {w}" for i, w in enumerate(["cats", "boats", "rivers"] * 4)]
    (tmp_path / "text" / "train").mkdir(parents=True)
    pq.write_table(pa.table({"id": ids[::-1], "label": (ids % 4)[::-1], "query": docs[::-1], "document": docs[::-1]}),
                   tmp_path / "text" / "train" / "part-0.parquet")  # not in id order on disk
    data = DataConfig(source="text_parquet", path=str(tmp_path / "text"))
    service = write_lineage(tmp_path, data, ids, ids % 4)
    assert service.health()["modality"] == "text"
    assert service.item(35) == {"id": 35, "label": 3, "text": "document number 3 about cats"}
    with pytest.raises(RequestError, match="id 36 is not in the corpus"):
        service.item(36)


def test_unreadable_data_is_a_503_naming_why(image_corpus, tmp_path):
    """The id is in the index but its item cannot be read here: the lineage names no data, the data is gone, or
    it holds another label (it changed since the index was built). The service keeps answering searches."""
    _, images, ids, _ = image_corpus
    bare = tmp_path / "bare"
    vectors = np.random.default_rng(3).normal(size=(N, D)).astype(np.float32)
    write_index(bare, ids, np.arange(N) % 4, vectors, [8, 16], "flat", {})
    for service, message in [
        (RetrievalService.from_path(str(bare), SETTINGS), "the index manifest names no embeddings directory"),
        (_moved_data(tmp_path / "gone", images, ids), "no Parquet data for split 'train'"),
        (_relabelled_data(tmp_path / "changed", images, ids), "the data changed since the index was built"),
    ]:
        with pytest.raises(RequestError) as err:
            service.item(int(ids[3]))
        assert err.value.status == 503 and message in err.value.detail, err.value.detail
        assert f"item {ids[3]} is in the index, but its data cannot be read here" in err.value.detail
        assert service.search({"id": int(ids[3]), "k": 3})["ids"][0] == ids[3]


def _moved_data(tmp, images, ids):
    tmp.mkdir()
    write_images(tmp / "data", images, np.arange(N) % 4, ids)
    service = write_lineage(tmp, DataConfig(source="parquet", path=str(tmp / "data")), ids, np.arange(N) % 4)
    shutil.rmtree(tmp / "data")
    return service


def _relabelled_data(tmp, images, ids):
    tmp.mkdir()
    write_images(tmp / "data", images, (np.arange(N) + 1) % 4, ids)
    return write_lineage(tmp, DataConfig(source="parquet", path=str(tmp / "data")), ids, np.arange(N) % 4)


def test_the_calibration_table_is_the_index_manifests(tmp_path, image_corpus):
    table = {"k": 10, "queries": 40, "rows": [
        {"setting": {"mode": "adaptive", "shortlist_size": 8, "shortlist_k": 20}, "recall": 0.8, "p50_ms": 0.1},
        {"setting": {"mode": "full"}, "recall": 1.0, "p50_ms": 0.4}]}
    _, images, ids, _ = image_corpus
    tmp_path.joinpath("calibrated").mkdir()
    write_images(tmp_path / "calibrated" / "data", images, np.arange(N) % 4, ids)
    service = write_lineage(tmp_path / "calibrated", DataConfig(source="parquet", path=str(tmp_path / "calibrated" / "data")),
                            ids, np.arange(N) % 4, calibration=table)
    assert service.calibration() == table == read_manifest(tmp_path / "calibrated" / "index")["calibration"]
    with pytest.raises(RequestError) as err:
        image_corpus[0].calibration()
    assert err.value.status == 404 and "no calibration table" in err.value.detail


def test_the_page_is_static_offline_and_shipped_with_the_package():
    html, media_type = page_asset("index.html")
    assert media_type.startswith("text/html") and b'src="page/app.js"' in html and b'href="page/style.css"' in html
    for name in PAGE_FILES:
        text = page_asset(name)[0].decode()
        # nothing fetched from elsewhere: no absolute URLs in src / href / url() / fetch / import
        assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//|url\(\s*["']?(https?:)?//|fetch\(\s*["'`]https?:"""
                             r"""|import\s.*https?:""", text), name
    script = page_asset("app.js")[0].decode()
    assert "innerHTML" not in script and "outerHTML" not in script  # data goes in as text, never as markup
    assert "createObjectURL" in script and "Bearer" not in script  # images fetched; the browser's login goes along
    for bad in ("../retrieval.py", "app.py", "page/index.html", ""):
        with pytest.raises(KeyError):
            page_asset(bad)
    # every page file is package data, so an installed (non-editable) mrl carries it
    section = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    globs = re.findall(r'"([^"]+)"', re.search(r"^mrl = \[(.*)\]", section, re.MULTILINE).group(1))
    on_disk = sorted(p.name for p in (REPO / "platform" / "mrl" / "service" / "page").iterdir())
    assert on_disk == sorted(PAGE_FILES)
    assert all(any(fnmatch.fnmatch(f"service/page/{name}", g) for g in globs) for name in on_disk)


def as_format_1(embeddings):
    """Rewrite an embed manifest as the embed stage wrote it before manifests listed files (format 1)."""
    manifest = json.loads((embeddings / "manifest.json").read_text())
    manifest.pop("files", None)
    (embeddings / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))


def test_an_index_over_format_1_embeddings_still_serves_its_items(image_corpus, tmp_path):
    """Indexes built before embed format 2 keep their items: the items need the embed manifest's data, model
    spec and augmentation, which format 1 holds; no Parquet file of it is read."""
    _, images, ids, _ = image_corpus
    tmp = tmp_path / "old"
    tmp.mkdir()
    write_images(tmp / "data", images, np.arange(N) % 4, ids)
    service = write_lineage(tmp, DataConfig(source="parquet", path=str(tmp / "data")), ids, np.arange(N) % 4)
    as_format_1(tmp / "embeddings")
    item = service.item(int(ids[5]))
    assert item["label"] == 5 % 4 and np.array_equal(decode_png(item["png"]), images[5, 0])
