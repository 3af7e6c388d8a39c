"""The bottom layer: MRL's math and models, needing nothing of ours but `mrl.configio` and `mrl.registry`.

- `nesting`: the nesting list (which prefix sizes are trained) and their weights.
- `losses`: the Matryoshka loss summed over prefix sizes, and the per-size losses (`LOSSES`).
- `metrics`: per-size accuracy and retrieval metrics as pure functions.
- `models`: encoders (`ENCODERS`: cnn and `transformers` ResNet/ViT/BERT built from config), MRL heads
  (`HEADS`) and the assembled `MRLModel`.
- `config`: `ModelConfig`, `NestingConfig`, `TextConfig`.
- `adaptive`: the adaptive classification cascade (smallest size that is confident enough).
- `reduction`: baselines that shrink a fixed representation (first m dims, PCA, random projection, linear probe).
- `tokens`: the [PAD] convention text encoders and tokenizers share.
"""

__all__ = ["adaptive", "config", "losses", "metrics", "models", "nesting", "reduction", "tokens"]
