"""The text tokenizer: deterministic training, exact round trip, fixed-length ids with [CLS]/[SEP]/padding."""

import subprocess
import sys

import numpy as np
import pytest

from mrl.core.tokens import PAD_ID
from mrl.data.tokenize import TextTokenizer, train_tokenizer

CORPUS = [
    "a domesticated carnivorous mammal that typically has a long snout",
    "feline mammal usually having thick soft fur and no ability to roar",
    "a motor vehicle with four wheels; usually propelled by an internal combustion engine",
    "travel by boat on a body of water; \"we sailed across the bay\"",
    "the act of running a race at a fast pace",
    "an intense dislike of cats and dogs and their fur",
] * 20


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return train_tokenizer(CORPUS, vocab_size=400, max_tokens=16)


def test_ids_are_fixed_length_framed_and_padded(tokenizer):
    ids = tokenizer.encode(["a cat", CORPUS[2]])
    assert ids.shape == (2, 16) and ids.dtype == np.int64
    cls_id, sep_id = tokenizer._tok.token_to_id("[CLS]"), tokenizer._tok.token_to_id("[SEP]")
    short = ids[0][ids[0] != PAD_ID]
    assert short[0] == cls_id and short[-1] == sep_id and tokenizer.decode(short) == "a cat"
    assert (ids[0][len(short):] == PAD_ID).all()
    assert ids[1][0] == cls_id and ids[1][-1] == sep_id and (ids[1] != PAD_ID).all()  # truncated, still framed


def test_round_trip_restores_the_normalised_text(tokenizer):
    long = train_tokenizer(CORPUS, 400, 64)
    for text in ["a domesticated mammal", "travel by boat; \"we sailed\"", "Zebras run", "unseen wørds ünicode"]:
        assert long.decode(long.encode([text])[0]) == text.lower()  # byte-level: nothing becomes [UNK]


def test_save_and_load_give_the_same_ids(tokenizer):
    again = TextTokenizer.from_json(tokenizer.to_json(), max_tokens=16)
    assert np.array_equal(again.encode(CORPUS[:6]), tokenizer.encode(CORPUS[:6]))
    assert again.vocab_size == tokenizer.vocab_size


def test_training_is_deterministic_across_processes(tmp_path):
    script = ("import sys; from mrl.data.tokenize import train_tokenizer; "
              "from tests.data.test_tokenize import CORPUS; "
              "sys.stdout.write(train_tokenizer(CORPUS, 400, 16).to_json())")
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] == train_tokenizer(CORPUS, 400, 16).to_json()
    assert train_tokenizer(CORPUS, 300, 16).to_json() != runs[0]  # a setting change does change it


def test_one_string_is_refused(tokenizer):
    with pytest.raises(TypeError, match="list of texts"):
        tokenizer.encode("a cat")
