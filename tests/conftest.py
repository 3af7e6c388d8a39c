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
