"""The text tokenizer: a byte-level BPE vocabulary trained with the `tokenizers` library on the training split.

It is saved beside the weights (`tokenizer.json` in the model directory, so it travels with the registered
model in MLflow) and every place a text model sees text (training, the embed stage, the service) tokenises
through the model's own `TextTokenizer`, never another one.

Token ids: 0 is [PAD] (the encoder's attention mask is `ids != 0`), then [UNK], [CLS], [SEP], [MASK].
Every sequence is `[CLS] pieces... [SEP]`, truncated to `max_tokens` and right-padded with 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mrl.core.tokens import PAD_ID

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class TextTokenizer:
    """A trained `tokenizers.Tokenizer` plus the fixed sequence length the model was trained with.

    Args:
        tokenizer: a `tokenizers.Tokenizer` whose vocabulary starts with `SPECIAL_TOKENS`.
        max_tokens: sequence length ([CLS] and [SEP] included).
    """

    def __init__(self, tokenizer, max_tokens: int):
        if tokenizer.token_to_id("[PAD]") != PAD_ID:
            raise ValueError("the tokenizer's [PAD] token must have id 0")
        self.max_tokens = int(max_tokens)
        self._tok = tokenizer
        self._tok.enable_truncation(self.max_tokens)
        self._tok.enable_padding(pad_id=PAD_ID, pad_token="[PAD]", length=self.max_tokens)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> token ids (N, max_tokens) int64, [CLS] first, [SEP] last, 0-padded."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        encodings = self._tok.encode_batch([str(t) for t in texts])
        return np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), self.max_tokens)

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> the normalised text (special tokens and padding dropped)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def tokens(self, text: str) -> list[str]:
        """The word pieces of one text, [CLS]/[SEP] included, padding excluded (for inspection)."""
        enc = self._tok.encode(text)
        return [t for t, m in zip(enc.tokens, enc.attention_mask) if m]

    def to_json(self) -> str:
        return self._tok.to_str()

    @classmethod
    def from_json(cls, text: str, max_tokens: int) -> "TextTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text), max_tokens)


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_tokens: int, lowercase: bool = True,
                    min_frequency: int = 2) -> TextTokenizer:
    """Train a byte-level BPE tokenizer on `texts` (NFKC-normalised, optionally lowercased).

    Byte-level BPE (GPT-2 style) rather than WordPiece: no text maps to [UNK], decoding restores the
    normalised text exactly, and training is deterministic (the same texts and settings give the same
    vocabulary and merges in any process; the `tokenizers` WordPiece trainer breaks frequency ties by
    hash-map order, so two runs differ).

    Args:
        texts: the training split's texts (queries and documents).
        vocab_size: target vocabulary size, special tokens included (smaller on a tiny corpus).
        max_tokens: sequence length of the returned tokenizer.
        lowercase: lowercase before splitting.
        min_frequency: a merge must occur this often to enter the vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((str(t) for t in texts), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return TextTokenizer(tok, max_tokens)
