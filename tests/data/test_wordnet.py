"""WordNet 3.0 as a text dataset (mrl.data.wordnet), on the real files of the `wordnet-base` package."""

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mrl.data import wordnet
from mrl.data.formats import DataError
from mrl.data.wordnet import (
    LEXNAMES,
    document_text,
    parse_data_line,
    query_text,
    read_synsets,
    read_text_split,
    split_of,
    write_wordnet_parquet,
)

ROOT = Path("/usr/share/wordnet")


@pytest.fixture(scope="module")
def synsets():
    return read_synsets(ROOT)


@pytest.fixture(scope="module")
def by_id(synsets):
    return {row["synset"]: row for row in synsets}


def test_lexnames_match_man_page():
    assert len(LEXNAMES) == 45
    assert (LEXNAMES[0], LEXNAMES[3], LEXNAMES[18], LEXNAMES[29], LEXNAMES[43], LEXNAMES[44]) == (
        "adj.all", "noun.Tops", "noun.person", "verb.body", "verb.weather", "adj.ppl")
    assert len(set(LEXNAMES)) == 45


def test_full_parse_counts(synsets):
    assert len(synsets) == 117659
    pos = Counter(row["pos"] for row in synsets)
    assert pos == {"n": 82115, "v": 13767, "a": 7463, "s": 10693, "r": 3621}
    assert len({row["label"] for row in synsets}) == 45
    assert all(row["lexname"] == LEXNAMES[row["label"]] for row in synsets)
    assert all(row["definition"] and row["lemmas"] and all(row["lemmas"]) for row in synsets)
    ids = [row["synset"] for row in synsets]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_offsets_are_byte_positions(synsets):
    # wndb(5WN): synset_offset is the line's byte offset in its data file; checks the line handling end to end.
    raw = (ROOT / "data.adv").read_bytes()
    adverbs = [row["synset"] for row in synsets if row["pos"] == "r"]
    assert len(adverbs) == 3621
    for synset in adverbs:
        offset = int(synset[1:])
        assert raw[offset - 1: offset] == b"\n" and raw[offset: offset + 8] == synset[1:].encode()


def test_entity(by_id):
    row = by_id["n00001740"]
    assert row["lemmas"] == ["entity"] and row["lexname"] == "noun.Tops" and row["label"] == 3
    assert row["definition"].startswith("that which is perceived")
    assert row["examples"] == [] and document_text(row) == "entity" and query_text(row) == row["definition"]


def test_verb_with_examples(by_id):
    row = by_id["v00001740"]  # same offset as entity, other file
    assert row == {
        "synset": "v00001740", "pos": "v", "lexname": "verb.body", "label": 29,
        "lemmas": ["breathe", "take a breath", "respire", "suspire"],
        "definition": "draw air into, and expel out of, the lungs",
        "examples": ["I can breathe better when the air is clean", "The patient is respiring"],
    }
    assert document_text(row) == ("breathe, take a breath, respire, suspire; "
                                  "I can breathe better when the air is clean; The patient is respiring")


def test_word_count_is_hexadecimal(by_id):
    # w_cnt "10" is sixteen words; read as decimal the pointer and frame fields would not line up.
    row = by_id["v00044149"]
    assert len(row["lemmas"]) == 16 and row["lemmas"][:2] == ["overdress", "dress up"]
    assert row["lemmas"][-1] == "tog out" and row["definition"].startswith("put on special clothes")
    assert len(by_id["v00017865"]["lemmas"]) == 10  # w_cnt "0a"


def test_adjective_markers_stripped(by_id, synsets):
    assert by_id["s00020103"]["lemmas"] == ["outback", "remote"]  # outback(a)
    assert by_id["s00014358"]["lemmas"] == ["abounding", "galore"]  # galore(ip)
    assert by_id["s00014358"]["examples"] == ["abounding confidence", "whiskey galore"]
    assert not any("(" in lemma or "_" in lemma for row in synsets for lemma in row["lemmas"])


def test_malformed_line_is_data_error():
    good = "00001740 03 n 01 entity 0 000 | that which is perceived"
    assert parse_data_line(good)["lemmas"] == ["entity"]
    with pytest.raises(DataError, match="malformed"):
        parse_data_line(good.replace(" 01 entity", " 02 entity"), "data.noun")
    with pytest.raises(DataError, match="malformed"):
        parse_data_line("00001740 03 n 01 entity 0 000 that which is perceived")


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y wordnet-base") as err:
        read_synsets(tmp_path)
    assert str(tmp_path / "data.noun") in str(err.value)


def test_split_deterministic_and_seeded(synsets):
    ids = [row["synset"] for row in synsets]
    seed0 = {i: split_of(i, 0, 0.1) for i in ids}
    assert seed0 == {i: split_of(i, 0, 0.1) for i in ids}
    seed1 = {i: split_of(i, 1, 0.1) for i in ids}
    assert seed0 != seed1
    for splits in (seed0, seed1):
        assert set(splits.values()) == {"train", "test"}
        assert abs(Counter(splits.values())["test"] / len(ids) - 0.1) < 0.01
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert {i: split_of(i, 0, 0.1) for i in shuffled} == seed0
    assert {split_of(i, 0, 0.0) for i in ids[:1000]} == {"train"}
    assert {split_of(i, 0, 1.0) for i in ids[:1000]} == {"test"}


def test_parquet_round_trip_and_cache(tmp_path, synsets):
    out = tmp_path / "wn"
    meta = write_wordnet_parquet(out, ROOT, seed=0, test_fraction=0.1, rows_per_shard=700, limit=2000)
    assert meta["rows"]["train"] + meta["rows"]["test"] == 2000 and meta["rows"]["test"] > 0
    assert meta["labels"] == list(LEXNAMES) and meta["format_version"] == 1 and meta["limit"] == 2000
    assert json.loads((out / "wordnet.json").read_text()) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wn"]  # no temp directory left beside it
    assert len(list((out / "train").glob("part-*.parquet"))) == -(-meta["rows"]["train"] // 700)

    table = pq.read_table(out / "train" / "part-00000.parquet")
    types = [str(t) for t in table.schema.types]
    assert types == ["int64", "int64", "string", "string", "string", "list<element: string>"]
    assert table.column_names == ["id", "label", "synset", "query", "document", "lemmas"]
    first = table.slice(0, 1).to_pylist()[0]
    row = synsets[first["id"]]
    assert first == {"id": first["id"], "label": row["label"], "synset": row["synset"], "query": row["definition"],
                     "document": document_text(row), "lemmas": row["lemmas"]}

    parts = {split: read_text_split(out, split) for split in ("train", "test")}
    all_ids = np.concatenate([parts["train"]["id"], parts["test"]["id"]])
    assert sorted(all_ids.tolist()) == list(range(2000))
    for split, part in parts.items():
        lengths = {len(part[key]) for key in ("id", "label", "query", "document")}
        assert lengths == {meta["rows"][split]}
        assert part["id"].dtype == np.int64 and part["label"].dtype == np.int64
        assert np.all(np.diff(part["id"]) > 0)
        for i in (0, len(part["id"]) - 1):
            row = synsets[part["id"][i]]
            assert split_of(row["synset"], 0, 0.1) == split
            assert (part["label"][i], part["query"][i], part["document"][i]) == (
                row["label"], row["definition"], document_text(row))
    head = read_text_split(out, "train", limit=5)
    assert head["id"].tolist() == parts["train"]["id"][:5].tolist() and len(head["document"]) == 5

    mtime = (out / "wordnet.json").stat().st_mtime_ns
    assert write_wordnet_parquet(out, ROOT, seed=0, test_fraction=0.1, limit=2000) == meta
    assert (out / "wordnet.json").stat().st_mtime_ns == mtime  # cache hit

    other = write_wordnet_parquet(out, ROOT, seed=1, test_fraction=0.1, limit=2000)  # settings changed: rewritten
    assert other["seed"] == 1 and json.loads((out / "wordnet.json").read_text())["seed"] == 1
    assert not np.array_equal(read_text_split(out, "test")["id"], parts["test"]["id"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wn"]


def test_killed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(wordnet, "_write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        write_wordnet_parquet(tmp_path / "wn", ROOT, limit=50)
    assert list(tmp_path.iterdir()) == []


def test_read_missing_split(tmp_path):
    with pytest.raises(DataError, match="write_wordnet_parquet") as err:
        read_text_split(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere" / "train") in str(err.value)
