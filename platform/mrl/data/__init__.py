"""Labelled data, read where it lives (above `mrl.core`).

- `sources`: `DATA_SOURCES`, one entry per kind of data (fashion_mnist, image_folder, parquet, wordnet,
  text_parquet) owning its modality, paths, preparation and readers; `open_split`, `load_split`,
  `load_text_split`, `prepare_data` dispatch through it. Adding a source is one registered entry.
- `readers`: splits opened from metadata and read by row range or as a Ray Data dataset (`SplitReader`).
- `formats`: leaf facts: `DataError`, Fashion-MNIST's IDX format and pixel statistics, the seeded
  train/validation split.
- `config`: `DataConfig`.
- `preprocess`, `augment`, `tokenize`, `wordnet`: pixels to model input, deterministic augmentation, the
  byte-level BPE tokenizer, WordNet as text pairs.
"""

__all__ = ["augment", "config", "formats", "preprocess", "readers", "sources", "tokenize", "wordnet"]
