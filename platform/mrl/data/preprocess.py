"""Image preprocessing shared by every place a model sees an image: the image-folder reader, the embed
stage and the service's encoder. One decode (to uint8 (C, H, W) at the model's size and channels) and one
standardise-and-embed, so a query image is embedded exactly as the corpus was."""

from __future__ import annotations

import io

import numpy as np

from mrl.data.formats import MEAN, STD


def decode_image(data: bytes | str, image_size: int, in_channels: int) -> np.ndarray:
    """An encoded image (PNG, JPEG, ... as bytes, or a path) -> uint8 (C, H, W): converted to grayscale
    (in_channels 1) or RGB (3) and resized to image_size x image_size.

    Raises:
        ValueError: the data is not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        img = img.convert("L" if in_channels == 1 else "RGB").resize((image_size, image_size))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a readable image ({exc})") from None
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if in_channels == 1 else arr.transpose(2, 0, 1)


def standardize(images, dtype=None):
    """uint8 images (B, C, H, W), a tensor on any device -> standardised there: (x / 255 - MEAN) / STD computed
    in float32 (bit for bit `mrl.data.sources.to_float`), then cast to `dtype` (default float32).

    Sending uint8 to an accelerator and standardising there moves a quarter of the bytes that float32 would.
    """
    import torch

    x = images.to(torch.float32).div_(255.0).sub_(MEAN).div_(STD)
    return x if dtype is None or dtype == torch.float32 else x.to(dtype)


def inference_model(model, device: str = "cpu", precision: str = "auto"):
    """`model` ready to embed on `device`: in eval mode, moved there, and on CUDA in channels_last memory order
    (faster convolutions) and, with precision auto or bf16, with bfloat16 weights. fp32 keeps float32 weights.

    Raises:
        ValueError: an unknown precision, or bf16 asked for on a CPU.
    """
    import torch

    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision {precision!r} is not accepted; choose auto, fp32 or bf16")
    dev = torch.device(device)
    if precision == "bf16" and dev.type == "cpu":
        raise ValueError("precision bf16 needs an accelerator; use fp32 (or auto) on the CPU")
    model = model.eval().to(dev)
    if dev.type == "cuda":
        if getattr(model, "modality", "image") == "image":
            model = model.to(memory_format=torch.channels_last)
        if precision in ("auto", "bf16"):
            model = model.to(torch.bfloat16)
    return model


def embed_images(model, images: np.ndarray, device: str | None = None) -> np.ndarray:
    """Representations of uint8 images (B, C, H, W) under `model` (an `MRLModel`): (B, d) float32.

    The uint8 batch is copied to the model's device and standardised there, in the model's weight dtype (see
    `inference_model`), in channels_last order on CUDA; one copy brings the representations back. Callable
    without Ray: the embed stage's actors, the service's encoder and the GPU check all run this function.
    `device`, when given, must be where the model's weights are.
    """
    import warnings

    import torch

    weight = next(model.parameters())
    if device is not None and torch.device(device).type != weight.device.type:
        raise ValueError(f"the model's weights are on {weight.device}, not {device}: prepare it with inference_model")
    with warnings.catch_warnings():  # read-only (Arrow) buffers: nothing writes to them, standardize copies first
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).to(weight.device)
    x = standardize(x, weight.dtype)
    if weight.device.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return model.embed(x).float().cpu().numpy()
