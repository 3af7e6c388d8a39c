"""Encoders mapping inputs to a backbone feature of some width; `MRLModel` projects it to d.

ResNet, ViT and BERT come from `transformers` model classes built from a config (random init), or from
a local directory saved with `save_pretrained` (`pretrained_path`); nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrl.registry import Registry

RESNET_SHAPES = {
    # depths and widths of torchvision's ResNet-18 / ResNet-50, as transformers ResNetConfig fields
    "resnet18": dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512]),
    "resnet50": dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048]),
}


class CompactCNN(nn.Module):
    """A small VGG-style CNN for CPU work: two conv blocks then a linear layer to `width`.

    Input (B, C, H, W) -> output (B, width). About 1.7M parameters at 28x28 with width 512.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, channels: tuple[int, int] = (32, 64),
                 width: int = 512, dropout: float = 0.1):
        super().__init__()
        c1, c2 = channels

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(in_channels, c1), block(c1, c2))
        side = image_size // 4
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * side * side, width))
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (B, width)


class HFVisionEncoder(nn.Module):
    """A `transformers` ResNetModel or ViTModel; output is its pooled feature (B, width)."""

    def __init__(self, model: nn.Module, kind: str, width: int):
        super().__init__()
        self.model, self.kind, self.width = model, kind, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        if self.kind == "resnet":
            return out.pooler_output.flatten(1)  # (B, C, 1, 1) -> (B, C)
        return out.last_hidden_state[:, 0]  # ViT: the [CLS] token (B, hidden)


class HFTextEncoder(nn.Module):
    """A `transformers` BertModel over token ids (B, T) (id 0 = [PAD], masked out); output (B, hidden) is the
    mean of the non-pad token states (`pooling: mean`) or the [CLS] state (`pooling: cls`)."""

    modality = "text"

    def __init__(self, model: nn.Module, width: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling {pooling!r} is not accepted; choose 'mean' or 'cls'")
        self.model, self.width, self.pooling = model, width, pooling

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != 0).long()  # (B, T); id 0 is [PAD]
        states = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            return states[:, 0]
        weights = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _from_config_or_path(model_cls: Any, config: Any, pretrained_path: str | None, **kwargs: Any) -> nn.Module:
    if pretrained_path is None:
        return model_cls(config, **kwargs)
    if not Path(pretrained_path).is_dir():
        raise FileNotFoundError(f"pretrained_path {pretrained_path!r} is not a local directory")
    return model_cls.from_pretrained(pretrained_path, local_files_only=True, **kwargs)


ENCODERS: Registry = Registry("encoder")


def encoder_modality(name: str) -> str:
    """What a registered encoder reads: "text" (token ids) or "image" (pixels). A builder declares text by
    carrying `modality = "text"`."""
    return getattr(ENCODERS.get(name), "modality", "image")


def build_encoder(name: str, in_channels: int = 1, image_size: int = 28, width: int = 512,
                  pretrained_path: str | None = None, backbone: dict[str, Any] | None = None,
                  text: dict[str, Any] | None = None) -> nn.Module:
    """Build an encoder by its registered name. The result has an int attribute `width` (its output size).

    Args:
        name: a name in `ENCODERS` (cnn | resnet18 | resnet50 | vit | bert).
        in_channels: image channels (vision encoders).
        image_size: square image side (cnn, vit).
        width: output width of the cnn (the others have their own width).
        pretrained_path: local `save_pretrained` directory for transformers encoders.
        backbone: extra config fields (transformers config kwargs; for cnn: `channels`, `dropout`).
        text: text encoders' `TextConfig` as a dict (vocab_size, max_tokens, pooling).
    """
    return ENCODERS.get(name)(in_channels=in_channels, image_size=image_size, width=width,
                              pretrained_path=pretrained_path, backbone=dict(backbone or {}), text=dict(text or {}))


@ENCODERS.register("cnn")
def _cnn(*, in_channels: int, image_size: int, width: int, pretrained_path: str | None, backbone: dict[str, Any],
         text: dict[str, Any]):
    """Compact CPU-friendly CNN (random init)."""
    return CompactCNN(in_channels, image_size, tuple(backbone.pop("channels", (32, 64))), width,
                      backbone.pop("dropout", 0.1), **backbone)


def _resnet(shape: str):
    def build(*, in_channels: int, image_size: int, width: int, pretrained_path: str | None,
              backbone: dict[str, Any], text: dict[str, Any]):
        import transformers

        cfg = transformers.ResNetConfig(num_channels=in_channels, **{**RESNET_SHAPES[shape], **backbone})
        model = _from_config_or_path(transformers.ResNetModel, cfg, pretrained_path)
        return HFVisionEncoder(model, "resnet", model.config.hidden_sizes[-1])
    build.__doc__ = f"transformers ResNetModel with {shape}'s depths and widths."
    return build


for _shape in RESNET_SHAPES:
    ENCODERS.register(_shape)(_resnet(_shape))


@ENCODERS.register("vit")
def _vit(*, in_channels: int, image_size: int, width: int, pretrained_path: str | None, backbone: dict[str, Any],
         text: dict[str, Any]):
    """transformers ViTModel (a small ViT by default); its [CLS] state is the feature."""
    import transformers

    fields = dict(image_size=image_size, patch_size=7 if image_size % 7 == 0 else 16, num_channels=in_channels,
                  hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768)
    cfg = transformers.ViTConfig(**{**fields, **backbone})
    model = _from_config_or_path(transformers.ViTModel, cfg, pretrained_path, add_pooling_layer=False)
    return HFVisionEncoder(model, "vit", model.config.hidden_size)


@ENCODERS.register("bert")
def _bert(*, in_channels: int, image_size: int, width: int, pretrained_path: str | None, backbone: dict[str, Any],
          text: dict[str, Any]):
    """transformers BertModel over token ids (a small BERT by default), pooled over tokens (mean by default).

    Its vocabulary is the trained tokenizer's (`text.vocab_size`), its positions `text.max_tokens`.
    """
    import transformers

    fields = dict(vocab_size=text.get("vocab_size", 30522), max_position_embeddings=text.get("max_tokens", 512),
                  hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    cfg = transformers.BertConfig(**{**fields, **backbone})
    model = _from_config_or_path(transformers.BertModel, cfg, pretrained_path, add_pooling_layer=False)
    return HFTextEncoder(model, model.config.hidden_size, text.get("pooling", "mean"))


_bert.modality = "text"
