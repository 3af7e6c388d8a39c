"""Shared fixtures. Integration tests use real Ray (local), real MLflow (sqlite in a temp dir), real FAISS
and real Ray Serve over HTTP on 127.0.0.1."""

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def repo() -> Path:
    return REPO


def tiny_text_model(texts: list[str], dim: int = 16, seed: int = 0):
    """A one-layer BERT text model (d = dim, sizes [4, dim]) with a tokenizer trained on `texts`, in eval mode."""
    import torch

    from mrl.core.models import build_model
    from mrl.data.tokenize import train_tokenizer

    torch.manual_seed(seed)
    model = build_model({"encoder": "bert", "dim": dim, "head": "none",
                         "nesting": {"schedule": "list", "sizes": [4, dim]}, "text": {"vocab_size": 300, "max_tokens": 16},
                         "backbone": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "intermediate_size": 32}}).eval()
    model.tokenizer = train_tokenizer(texts, 300, 16)
    return model
