"""The model's config: encoder, representation size d, MRL heads and the nesting list (the prefix sizes trained
and their weights). Checked when built, so a bad model config stops a job before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mrl.configio import ConfigError, check, positive, registered
from mrl.core.nesting import NestingError, log_sizes, uniform_sizes, validate_sizes, validate_weights


@dataclass(frozen=True, kw_only=True)
class NestingConfig:
    """Which prefix sizes are trained and how much each counts."""

    schedule: Literal["log", "uniform", "list"] = "log"
    """log: powers of two from min_size up to d (d included); uniform: `count` evenly spaced sizes;
    list: exactly `sizes`."""
    min_size: int = 8
    """Smallest size for log/uniform schedules, in [1, d]."""
    count: int = 8
    """Number of sizes for the uniform schedule."""
    sizes: tuple[int, ...] | None = None
    """Explicit sorted list of sizes in [1, d] (schedule: list)."""
    weights: tuple[float, ...] | None = None
    """Relative importance c_m per size (default all 1); one per size."""

    def resolve(self, dim: int) -> list[int]:
        """The nesting list for representation size `dim`."""
        try:
            if self.schedule == "log":
                return log_sizes(dim, self.min_size)
            if self.schedule == "uniform":
                return uniform_sizes(dim, self.min_size, self.count)
            if self.sizes is None:
                raise NestingError("schedule 'list' needs nesting.sizes, e.g. [8, 16, 32, 64]")
            return validate_sizes(self.sizes, dim)
        except NestingError as exc:
            raise ConfigError(f"nesting: {exc}") from None

    def resolve_weights(self, dim: int) -> list[float]:
        try:
            return validate_weights(self.weights, self.resolve(dim))
        except NestingError as exc:
            raise ConfigError(f"nesting.weights: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    """Text encoders only: the tokenizer trained on the training split, and how token states are pooled."""

    vocab_size: int = 8192
    """Byte-level BPE vocabulary size (special tokens included); also the encoder's embedding table."""
    max_tokens: int = 64
    """Every text is cut to this many tokens ([CLS] and [SEP] included) and padded to it."""
    lowercase: bool = True
    pooling: Literal["mean", "cls"] = "mean"
    """mean: average of the non-pad token states; cls: the [CLS] state."""

    def __post_init__(self) -> None:
        check(self.vocab_size >= 300, f"text.vocab_size must be >= 300 (bytes + specials), got {self.vocab_size}")
        check(self.max_tokens >= 3, f"text.max_tokens must be >= 3, got {self.max_tokens}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The encoder, its representation size d and the MRL heads."""

    encoder: str = "cnn"
    """A name in `mrl.core.models.encoders.ENCODERS`: cnn (compact CPU-friendly CNN); resnet18/resnet50/vit/bert
    (`transformers` models built from config)."""
    dim: int = 512
    """Representation size d; a projection maps the backbone's width to d when they differ."""
    head: str = "mrl"
    """A name in `mrl.core.models.heads.HEADS`: mrl (an independent linear head per size); mrl_e (one shared
    head sliced per size)."""
    num_classes: int = 10
    in_channels: int = 1
    """Image channels (1 for Fashion-MNIST, 3 for RGB)."""
    image_size: int = 28
    """Input images are square of this side."""
    nesting: NestingConfig = field(default_factory=NestingConfig)
    pretrained_path: str | None = None
    """Local directory with `transformers` weights (config.json + weights); never downloaded."""
    backbone: dict[str, Any] = field(default_factory=dict)
    """Extra `transformers` config fields (e.g. hidden_size, num_hidden_layers) or cnn widths."""
    text: TextConfig = field(default_factory=TextConfig)
    """Tokenizer and pooling of text encoders (bert); ignored by image encoders."""
    projection: bool = False
    """A linear layer from the encoder's output to z even when its width is already d (there is always one when
    it differs): the nested prefixes are then cut from a learned projection, not from the encoder's own state."""

    def __post_init__(self) -> None:
        # lazy: mrl.core.models imports this module (build_model validates a spec), and brings torch
        from mrl.core.models.encoders import ENCODERS
        from mrl.core.models.heads import HEADS  # lazy: as above

        registered("encoder", self.encoder, ENCODERS)
        registered("head", self.head, HEADS)
        if self.modality == "text":
            check(self.head == "none", f"encoder {self.encoder!r} is a text encoder, trained contrastively on "
                                        f"(query, document) pairs without a classifier: set head: none, "
                                        f"not {self.head!r}")
        positive("dim", self.dim)
        check(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        check(self.in_channels in (1, 3), f"in_channels must be 1 or 3, got {self.in_channels}")
        positive("image_size", self.image_size)
        self.nesting.resolve_weights(self.dim)  # raises on a bad list or weights
        if self.pretrained_path is not None:
            check(self.encoder != "cnn", "pretrained_path is only for transformers encoders, not 'cnn'")

    @property
    def sizes(self) -> list[int]:
        return self.nesting.resolve(self.dim)

    @property
    def modality(self) -> str:
        """"text" for encoders over token ids, else "image"."""
        from mrl.core.models.encoders import encoder_modality  # lazy: as in __post_init__

        return encoder_modality(self.encoder)

    @property
    def weights(self) -> list[float]:
        return self.nesting.resolve_weights(self.dim)
