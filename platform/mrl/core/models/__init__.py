"""Encoders, MRL heads and the assembled model."""

from mrl.core.models.heads import MRLEHead, MRLHead, build_head
from mrl.core.models.model import MRLModel, build_model

__all__ = ["MRLHead", "MRLEHead", "build_head", "MRLModel", "build_model"]
