"""The MRL model: encoder -> (projection to d) -> representation z (B, d) -> per-size heads."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mrl.configio import from_dict, to_dict
from mrl.core.config import ModelConfig
from mrl.core.models.encoders import build_encoder
from mrl.core.models.heads import build_head
from mrl.core.tokens import trim_padding


class MRLModel(nn.Module):
    """Encoder plus nested heads. `embed(x)` gives z (B, d); `forward(x)` gives one logit tensor per size
    (`forward(x, embed_only=True)` gives z, so a DDP-wrapped model can be trained through its embeddings).

    Attributes:
        dim: representation size d.
        sizes: the nesting list.
        spec: the plain-dict model config it was built from (kept for MLflow metadata and reloading).
        modality: "image" (x is pixels (B, C, H, W)) or "text" (x is token ids (B, T)).
        tokenizer: a text model's `mrl.data.tokenize.TextTokenizer` (saved and loaded with the weights);
            None for image models and for a text model not yet given one.
    """

    def __init__(self, encoder: nn.Module, dim: int, sizes: list[int], head: nn.Module, spec: dict[str, Any],
                 projection: bool = False):
        super().__init__()
        self.encoder = encoder
        self.projection = (nn.Linear(encoder.width, dim) if projection or encoder.width != dim else nn.Identity())
        self.head = head
        self.dim, self.sizes, self.spec = dim, list(sizes), spec
        self.modality = getattr(encoder, "modality", "image")
        self.tokenizer = None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(x))  # (B, d)

    def classify(self, z: torch.Tensor) -> list[torch.Tensor]:
        return self.head(z)  # [(B, C)] * len(sizes); [] for a model without a head

    def forward(self, x: torch.Tensor, embed_only: bool = False) -> list[torch.Tensor] | torch.Tensor:
        z = self.embed(x)
        return z if embed_only else self.classify(z)

    def embed_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """A text model's representations of `texts`: (N, d) float32, tokenised with its own tokenizer."""

        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: it is not a text model, or was built without one")
        return self.embed_ids(self.tokenizer.encode(texts), batch_size)

    def embed_ids(self, ids: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """A text model's representations of token ids (N, T) int64 of its own vocabulary, [PAD] (0) masked:
        (N, d) float32. `embed_texts` is this after the tokenizer."""
        device = next(self.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(ids), batch_size):
                block = torch.from_numpy(trim_padding(np.asarray(ids[i:i + batch_size], dtype=np.int64))).to(device)
                out.append(self.embed(block).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def build_model(spec: dict[str, Any]) -> MRLModel:
    """Build an `MRLModel` from a `ModelConfig` as a plain dict (see `mrl.configio.to_dict`).

    Args:
        spec: encoder, dim, head, num_classes, in_channels, image_size, nesting, pretrained_path, backbone.
    """

    cfg = from_dict(ModelConfig, spec, prefix="model.")
    encoder = build_encoder(cfg.encoder, cfg.in_channels, cfg.image_size, cfg.dim, cfg.pretrained_path, cfg.backbone,
                            to_dict(cfg.text))
    head = build_head(cfg.head, cfg.sizes, cfg.num_classes, cfg.dim)
    return MRLModel(encoder, cfg.dim, cfg.sizes, head, spec, projection=cfg.projection)


def head_logits(model, z: np.ndarray) -> list[np.ndarray]:
    """The model's per-size logits for representations z (N, d): one (N, C) array per nesting size."""
    with torch.no_grad():
        return [t.numpy() for t in model.classify(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)))]
