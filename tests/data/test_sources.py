"""Data loaders on tiny generated files (mrl.data.sources)."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mrl.data.formats import DataError, load_fashion_mnist, read_idx, to_float, train_val_indices
from mrl.data.sources import load_split


def _load(source, root, split, image_size, in_channels):
    """Split `split` as it is named on disk, through the source's entry (load_split)."""
    from mrl.config import DataConfig, ModelConfig

    data = DataConfig(source=source, path=str(root), **({} if split == "train" else {"test_split": split}))
    model = ModelConfig(image_size=image_size, in_channels=in_channels)
    return load_split(data, model, "train" if split == "train" else "test")


def load_parquet(root, split, image_size, in_channels):
    return _load("parquet", root, split, image_size, in_channels)


def load_image_folder(root, split, image_size, in_channels):
    return _load("image_folder", root, split, image_size, in_channels)


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path, array, compress=False):
    data = idx_bytes(array)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fmnist(root, split, n, compress, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    stem_img, stem_lbl = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}[split]
    write_idx(root / stem_img, images, compress)
    write_idx(root / stem_lbl, labels, compress)
    return images, labels


# ---------------------------------------------------------------- Fashion-MNIST IDX

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_fashion_mnist(tmp_path, split, compress):
    images, labels = make_fmnist(tmp_path, split, n=5, compress=compress)
    x, y = load_fashion_mnist(tmp_path, split)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (5,) and y.dtype == np.int64
    assert np.array_equal(x[:, 0], images)
    assert np.array_equal(y, labels.astype(np.int64))


def test_load_fashion_mnist_accepts_str_root_and_mixed_compression(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([9, 0, 4]), compress=False)
    x, y = load_fashion_mnist(str(tmp_path), "train")
    assert np.array_equal(x[:, 0], images) and y.tolist() == [9, 0, 4]


def test_read_idx_shape_and_values(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    out = read_idx(tmp_path / "a")
    assert out.shape == (2, 3, 4) and np.array_equal(out, arr)


def test_read_idx_rejects_non_ubyte(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0\0\0\0")  # float IDX
    with pytest.raises(DataError, match=r"is not an unsigned-byte IDX file"):
        read_idx(path)


def test_missing_directory_names_path_and_package(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_fashion_mnist(missing, "train")
    msg = str(info.value)
    assert str(missing) in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_missing_labels_file(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        load_fashion_mnist(tmp_path, "test")


def test_image_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2))
    with pytest.raises(DataError, match=r"3 images but 2 labels in the train split"):
        load_fashion_mnist(tmp_path, "train")


# ---------------------------------------------------------------- Parquet

def write_parquet(path, images, labels):
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = [row.reshape(-1).tolist() for row in images]
    table = pa.table({"image": pa.array(flat, type=pa.list_(pa.uint8())), "label": pa.array(labels, pa.int64())})
    pq.write_table(table, path)


@pytest.mark.parametrize("channels", [1, 3])
def test_load_parquet(tmp_path, channels):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(4, channels, 6, 6), dtype=np.uint8)
    labels = [3, 1, 0, 3]
    write_parquet(tmp_path / "test.parquet", images, labels)
    x, y = load_parquet(tmp_path, "test", image_size=6, in_channels=channels)
    assert x.shape == (4, channels, 6, 6) and x.dtype == np.uint8
    assert np.array_equal(x, images)
    assert y.tolist() == labels and y.dtype == np.int64


def test_load_parquet_wrong_shape(tmp_path):
    write_parquet(tmp_path / "train.parquet", np.zeros((2, 1, 4, 4), dtype=np.uint8), [0, 1])
    with pytest.raises(DataError, match=r"train\.parquet: column image holds 32 values in 2 rows, expected 1x5x5 per row"):
        load_parquet(tmp_path, "train", image_size=5, in_channels=1)


def test_load_parquet_missing(tmp_path):
    with pytest.raises(DataError, match=r"no Parquet data for split 'train': expected .*/train/\*\.parquet or .*/train\.parquet"):
        load_parquet(tmp_path, "train", 28, 1)


# ---------------------------------------------------------------- image folder

def _save_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_load_image_folder_grayscale(tmp_path):
    pytest.importorskip("PIL")
    base = tmp_path / "train"
    (base / "b_dog").mkdir(parents=True)
    (base / "a_cat").mkdir(parents=True)
    (base / "c_empty_class").mkdir(parents=True)
    cat1 = np.full((4, 4), 10, dtype=np.uint8)
    cat2 = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    dog = np.full((4, 4), 200, dtype=np.uint8)
    _save_png(base / "a_cat" / "2.png", cat2)
    _save_png(base / "a_cat" / "1.png", cat1)
    _save_png(base / "b_dog" / "x.png", dog)
    (base / "b_dog" / "notes.txt").write_text("not an image")
    x, y = load_image_folder(tmp_path, "train", image_size=4, in_channels=1)
    assert x.shape == (3, 1, 4, 4) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 1]  # classes sorted by name, files sorted within a class
    assert np.array_equal(x[0, 0], cat1) and np.array_equal(x[1, 0], cat2) and np.array_equal(x[2, 0], dog)


def test_load_image_folder_rgb_and_resize(tmp_path):
    pytest.importorskip("PIL")
    base = tmp_path / "test" / "only"
    base.mkdir(parents=True)
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 120, 250
    _save_png(base / "a.png", rgb)
    _save_png(base / "b.png", np.full((5, 7, 3), 77, dtype=np.uint8))  # other size: resized
    x, y = load_image_folder(tmp_path, "test", image_size=8, in_channels=3)
    assert x.shape == (2, 3, 8, 8)
    assert y.tolist() == [0, 0]
    assert (x[0, 0] == 30).all() and (x[0, 1] == 120).all() and (x[0, 2] == 250).all()  # channels first
    assert (x[1] == 77).all()


def test_load_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(DataError, match=r"image folder .*train does not exist"):
        load_image_folder(tmp_path, "train", 4, 1)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"has no class sub-directories"):
        load_image_folder(tmp_path, "train", 4, 1)
    (tmp_path / "train" / "cls").mkdir()
    (tmp_path / "train" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds no images"):
        load_image_folder(tmp_path, "train", 4, 1)


# ---------------------------------------------------------------- load_split, splits, scaling

def test_load_split_applies_limits_and_checks_shape(tmp_path):
    from mrl.config import DataConfig, ModelConfig

    images, labels = make_fmnist(tmp_path, "train", n=6, compress=False)
    make_fmnist(tmp_path, "test", n=4, compress=True, seed=1)
    data = DataConfig(path=str(tmp_path), train_limit=3)
    x, y = load_split(data, ModelConfig(), "train")
    assert x.shape == (3, 1, 28, 28) and np.array_equal(x[:, 0], images[:3]) and np.array_equal(y, labels[:3])
    x, _ = load_split(data, ModelConfig(), "test")
    assert len(x) == 4  # no test_limit
    with pytest.raises(DataError, match=r"images have shape \(1, 28, 28\), but the model expects \(3, 28, 28\)"):
        load_split(data, ModelConfig(in_channels=3), "train")


@pytest.mark.parametrize("n, frac, n_val", [(100, 0.2, 20), (10, 0.05, 0), (7, 0.3, 2), (1, 0.0, 0)])
def test_train_val_indices_disjoint_and_covering(n, frac, n_val):
    train, val = train_val_indices(n, frac, seed=4)
    assert len(val) == n_val and len(train) == n - n_val
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(n))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def test_train_val_indices_seeded():
    a = train_val_indices(50, 0.2, seed=0)
    b = train_val_indices(50, 0.2, seed=0)
    c = train_val_indices(50, 0.2, seed=1)
    assert np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_to_float():
    out = to_float(np.array([[[[0, 255]]]], dtype=np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [(0 - 0.2860) / 0.3530, (1 - 0.2860) / 0.3530], rtol=1e-6)


def test_a_text_limit_is_a_seeded_sample_across_the_whole_split(tmp_path):
    from mrl.config import DataConfig
    from mrl.data.sources import load_text_split

    data = DataConfig(source="wordnet", path=str(tmp_path / "wn"), train_limit=3000)
    rows = load_text_split(data, "train")
    assert len(rows["id"]) == len(rows["query"]) == len(rows["document"]) == 3000
    assert np.all(np.diff(rows["id"]) > 0)
    assert len(set(rows["label"].tolist())) > 40  # nouns, verbs, adjectives and adverbs, not just the first ids
    again = load_text_split(data, "train")
    assert np.array_equal(again["id"], rows["id"]) and again["query"] == rows["query"]
    other = load_text_split(DataConfig(source="wordnet", path=str(tmp_path / "wn"), train_limit=3000, seed=1), "train")
    assert not np.array_equal(other["id"], rows["id"])


# ---------------------------------------------------------------- the DATA_SOURCES registry

def test_a_source_registered_by_a_test_is_accepted_and_read_through_its_entry(tmp_path):
    """Adding a source is one registered entry: configs accept its name, its modality and default root come from
    it, and the stages' functions (load_split, prepare_data, check_paths) go through it."""
    from mrl.config import ConfigError, DataConfig, ModelConfig, TrainJobConfig, check_paths
    from mrl.data.sources import DATA_SOURCES, DataSource, prepare_data

    rng = np.random.default_rng(0)
    splits = {"train": rng.integers(0, 256, (5, 1, 28, 28), dtype=np.uint8), "holdout": np.zeros((2, 1, 28, 28),
                                                                                                dtype=np.uint8)}
    seen = []

    def load(data, split):
        seen.append(split)
        images = splits["train" if split == "train" else data.test_split]
        return images, np.arange(len(images), dtype=np.int64) % 3

    def paths(data, prefix):
        if not Path(data.root).is_dir():
            raise ConfigError(f"{prefix}path {data.root!r}: no toy data there")

    with pytest.raises(ConfigError, match=r"^source 'toy' is not accepted; choose one of \['fashion_mnist'"):
        DataConfig(source="toy")
    DATA_SOURCES.register("toy")(DataSource(modality="image", default_root=str(tmp_path), check_paths=paths,
                                            prepare=lambda data, out: data, load=load))
    try:
        data = DataConfig(source="toy", test_split="holdout", train_limit=4)
        assert data.root == str(tmp_path) and data.modality == "image" and prepare_data(data, "out") is data
        x, y = load_split(data, ModelConfig(), "train")
        assert np.array_equal(x, splits["train"][:4]) and y.tolist() == [0, 1, 2, 0]
        assert len(load_split(data, ModelConfig(), "test")[0]) == 2 and seen == ["train", "test"]
        check_paths(DataConfig(source="toy"))
        with pytest.raises(ConfigError, match=r"data\.path '/nowhere': no toy data there"):
            check_paths(TrainJobConfig(data=DataConfig(source="toy", path="/nowhere")))
    finally:
        DATA_SOURCES.unregister("toy")


def _text_split(path, ids):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array([i % 2 for i in ids], pa.int64()),
                             "query": [f"q{i}" for i in ids], "document": [f"doc {i}" for i in ids]}), path)


def test_text_parquet_reads_every_parquet_file_of_a_split_and_honours_test_split(tmp_path):
    """text_parquet is <path>/<split>/*.parquet (any file name) with columns id, label, query, document; the
    held-out split is data.test_split on disk, as for image sources."""
    from mrl.config import DataConfig
    from mrl.data.sources import load_text_split

    _text_split(tmp_path / "train" / "b.parquet", [5, 3])
    _text_split(tmp_path / "train" / "a.parquet", [4])
    _text_split(tmp_path / "dev" / "only.parquet", [9, 7, 8])
    data = DataConfig(source="text_parquet", path=str(tmp_path), test_split="dev")
    train = load_text_split(data, "train")
    assert train["id"].tolist() == [3, 4, 5] and train["document"] == ["doc 3", "doc 4", "doc 5"]
    assert train["query"] == ["q3", "q4", "q5"] and train["label"].tolist() == [1, 0, 1]
    assert load_text_split(data, "test")["id"].tolist() == [7, 8, 9]
    with pytest.raises(DataError, match=r"text_parquet split .*/test not found \(expected .*/test/\*\.parquet"):
        load_text_split(DataConfig(source="text_parquet", path=str(tmp_path)), "test")


def test_text_parquet_names_a_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mrl.config import DataConfig
    from mrl.data.sources import load_text_split

    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"id": [1], "label": [0], "query": ["q"]}), tmp_path / "train" / "x.parquet")
    with pytest.raises(DataError, match=r"x\.parquet: no column \['document'\]"):
        load_text_split(DataConfig(source="text_parquet", path=str(tmp_path)), "train")
