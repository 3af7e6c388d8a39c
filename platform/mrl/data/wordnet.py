"""WordNet 3.0 as a text dataset for Matryoshka text embeddings.

Source: the WordNet database files `data.noun`, `data.verb`, `data.adj` and `data.adv` (Debian package
`wordnet-base`, installed under /usr/share/wordnet; format in wndb(5WN)). Each file starts with a licence header
whose lines begin with two spaces; every other line is one synset:

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [ptr ...] [frames ...] | gloss

`w_cnt` is two hexadecimal digits, `p_cnt` three decimal digits, each pointer four fields, and verb synsets add
`f_cnt` (decimal) followed by `+ f_num w_num` triples. The gloss holds a definition followed by double-quoted
usage examples separated by "; ". `lex_filenum` indexes the 45 lexicographer files of lexnames(5WN)
(`LEXNAMES`); it is the class label (noun.animal, verb.motion, adj.all, ...).

One row per synset. The retrieval pair is query = the definition, document = the lemmas then the examples
("dog, domestic dog, Canis familiaris; the dog barked all night"). Rows are split into train/test by a stable
hash of (seed, synset id), so a synset keeps its split whatever the row order or `limit`.

On disk (`write_wordnet_parquet`):

    <out_dir>/wordnet.json                  metadata, written last (its presence marks a complete conversion)
    <out_dir>/<split>/part-00000.parquet    columns id, label, synset, query, document, lemmas

`id` is the synset's position in the full list sorted by synset id, unique across both splits.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mrl.data.formats import DataError
from mrl.data.readers import read_text_rows

DEFAULT_ROOT = "/usr/share/wordnet"
POS_FILES = ("noun", "verb", "adj", "adv")
SPLITS = ("train", "test")
FORMAT_VERSION = 1
METADATA_FILE = "wordnet.json"
INSTALL_HINT = "install WordNet with `apt-get install -y wordnet-base` (files go to /usr/share/wordnet)"

# lexnames(5WN): lexicographer file names indexed by lex_filenum.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)

# Syntactic markers appended to adjectives in data.adj: (a) prenominal, (p) predicate, (ip) immediately postnominal.
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def _clean_lemma(word: str) -> str:
    """A data-file word as text: adjective marker dropped, underscores turned into spaces."""
    return _ADJ_MARKER.sub("", word).replace("_", " ")


def _split_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split a gloss into (definition, examples).

    The definition is the text before the first double quote, without trailing ';', ':', ',' or whitespace.
    Examples are the double-quoted pieces; an unterminated last quote (a few glosses have one) runs to the end.
    """
    parts = gloss.strip().split('"')
    definition = parts[0].strip().rstrip(";:,").strip()
    examples = [piece.strip() for piece in parts[1::2] if piece.strip()]
    return definition, examples


def parse_data_line(line: str, path: Path | str = "<line>") -> dict[str, Any]:
    """Parse one synset line of a data.pos file (wndb(5WN)).

    Args:
        line: the line, with or without its newline.
        path: the file it came from, for error messages.

    Returns:
        {"synset", "pos", "lexname", "label", "lemmas", "definition", "examples"}; `synset` is the ss_type
        character followed by the 8-digit offset ("n00001740", "s00020103").
    """
    head, bar, gloss = line.partition(" | ")
    tokens = head.split()
    try:
        offset, lex_filenum, ss_type = tokens[0], int(tokens[1]), tokens[2]
        w_cnt = int(tokens[3], 16)
        words = tokens[4: 4 + 2 * w_cnt: 2]
        cursor = 4 + 2 * w_cnt
        p_cnt = int(tokens[cursor])
        cursor += 1 + 4 * p_cnt
        if cursor < len(tokens):  # verb frames: f_cnt then (+ f_num w_num) triples
            cursor += 1 + 3 * int(tokens[cursor])
        if not bar or cursor != len(tokens) or len(words) != w_cnt or len(offset) != 8 or lex_filenum < 0:
            raise ValueError("field counts do not add up")
        lexname = LEXNAMES[lex_filenum]
    except (IndexError, ValueError) as err:
        raise DataError(f"{path}: malformed WordNet data line ({err}): {line[:120]!r}") from err
    definition, examples = _split_gloss(gloss)
    return {
        "synset": f"{ss_type}{offset}",
        "pos": ss_type,
        "lexname": lexname,
        "label": lex_filenum,
        "lemmas": [_clean_lemma(w) for w in words],
        "definition": definition,
        "examples": examples,
    }


def _data_file(root: Path, pos: str) -> Path:
    path = root / f"data.{pos}"
    if not path.is_file():
        raise DataError(f"WordNet data file {path} not found; {INSTALL_HINT}, or pass root= the directory "
                        "holding data.noun, data.verb, data.adj and data.adv")
    return path


def read_synsets(root: str | Path = DEFAULT_ROOT) -> list[dict[str, Any]]:
    """Every synset of the four WordNet data files, sorted by synset id.

    Args:
        root: directory holding data.noun, data.verb, data.adj and data.adv.

    Returns:
        One dict per synset (see `parse_data_line`).

    Raises:
        DataError: a data file is missing or a line is malformed.
    """
    root = Path(root)
    rows = []
    for pos in POS_FILES:
        path = _data_file(root, pos)
        with open(path, encoding="utf-8") as f:
            rows.extend(parse_data_line(line, path) for line in f if not line.startswith("  ") and line.strip())
    rows.sort(key=lambda row: row["synset"])
    return rows


def document_text(row: dict[str, Any]) -> str:
    """Document side of a synset: lemmas joined by ", ", then "; " and the examples joined by "; " if any."""
    text = ", ".join(row["lemmas"])
    if row["examples"]:
        text += "; " + "; ".join(row["examples"])
    return text


def query_text(row: dict[str, Any]) -> str:
    """Query side of a synset: its definition."""
    return row["definition"]


def split_of(synset_id: str, seed: int, test_fraction: float) -> str:
    """"train" or "test" for a synset, from a blake2b hash of f"{seed}:{synset_id}" (stable across runs)."""
    digest = hashlib.blake2b(f"{seed}:{synset_id}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") / 2 ** 64 < test_fraction else "train"


def _columns(rows: list[dict[str, Any]], ids: list[int]) -> dict[str, list]:
    return {
        "id": ids,
        "label": [row["label"] for row in rows],
        "synset": [row["synset"] for row in rows],
        "query": [query_text(row) for row in rows],
        "document": [document_text(row) for row in rows],
        "lemmas": [row["lemmas"] for row in rows],
    }


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("label", pa.int64()), ("synset", pa.string()), ("query", pa.string()),
                      ("document", pa.string()), ("lemmas", pa.list_(pa.string()))])


def _write_split(split_dir: Path, columns: dict[str, list], rows_per_shard: int) -> None:
    """Write one split as part-00000.parquet, part-00001, ... (one empty shard if the split has no rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    split_dir.mkdir(parents=True)
    table = pa.Table.from_pydict(columns, schema=_schema())
    starts = range(0, max(len(table), 1), rows_per_shard)
    for shard, start in enumerate(starts):
        pq.write_table(table.slice(start, rows_per_shard), split_dir / f"part-{shard:05d}.parquet")


def _read_metadata(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished `tmp` to `out_dir`, replacing an existing (stale) `out_dir`."""
    if out_dir.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale-", dir=out_dir.parent))
        out_dir.rename(stale / out_dir.name)
        tmp.rename(out_dir)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def write_wordnet_parquet(out_dir: str | Path, root: str | Path = DEFAULT_ROOT, seed: int = 0,
                          test_fraction: float = 0.1, rows_per_shard: int = 20000,
                          limit: int | None = None) -> dict[str, Any]:
    """Convert WordNet into train/test Parquet shards under `out_dir` (see the module docstring).

    The conversion is built in a temporary directory beside `out_dir` and renamed into place, so a killed run
    never leaves a directory that looks complete. An existing conversion with the same source, seed,
    test_fraction, limit and format version is kept as is (cache hit).

    Args:
        out_dir: output directory.
        root: WordNet directory holding the data.pos files.
        seed: split seed (`split_of`).
        test_fraction: expected share of synsets in the test split.
        rows_per_shard: rows per Parquet file.
        limit: keep only the first `limit` synsets of the sorted list (before splitting); None keeps all.

    Returns:
        The metadata written to <out_dir>/wordnet.json.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    out_dir = Path(out_dir)
    meta = {"source": str(Path(root)), "seed": seed, "test_fraction": test_fraction, "limit": limit,
            "format_version": FORMAT_VERSION}
    existing = _read_metadata(out_dir)
    if existing is not None and all(existing.get(key) == value for key, value in meta.items()):
        return existing
    rows = read_synsets(root)
    if limit is not None:
        rows = rows[:limit]
    chosen: dict[str, tuple[list, list]] = {split: ([], []) for split in SPLITS}
    for index, row in enumerate(rows):
        split_rows, split_ids = chosen[split_of(row["synset"], seed, test_fraction)]
        split_rows.append(row)
        split_ids.append(index)
    meta["rows"] = {split: len(chosen[split][0]) for split in SPLITS}
    meta["labels"] = list(LEXNAMES)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for split, (split_rows, split_ids) in chosen.items():
            _write_split(tmp / split, _columns(split_rows, split_ids), rows_per_shard)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def read_text_split(path: str | Path, split: str, limit: int | None = None) -> dict[str, Any]:
    """Read one split written by `write_wordnet_parquet`, sorted by id.

    Args:
        path: the conversion's output directory (holding <split>/part-*.parquet).
        split: the split's directory name ("train", "test").
        limit: keep only the first `limit` rows (by id); None keeps all.

    Returns:
        {"id": int64 array, "label": int64 array, "query": list[str], "document": list[str]}.

    Raises:
        DataError: the split directory or its shards are missing.
    """
    rows = read_text_rows(Path(path) / split, "WordNet text split", "write it with "
                          "mrl.data.wordnet.write_wordnet_parquet or run the text pipeline, which does")
    if limit is None:
        return rows
    return {key: value[:limit] for key, value in rows.items()}
