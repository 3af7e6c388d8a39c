"""Image preprocessing shared by every place a model sees an image: the image-folder reader, the embed
stage and the service's encoder. One decode (to uint8 (C, H, W) at the model's size and channels) and one
standardise-and-embed, so a query image is embedded exactly as the corpus was."""

from __future__ import annotations

import io

import numpy as np


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


def embed_images(model, images: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Representations of uint8 images (B, C, H, W) under `model` (an `MRLModel`): (B, d) float32."""
    import torch

    from mrl.data.sources import to_float

    with torch.no_grad():
        return model.embed(torch.from_numpy(to_float(images)).to(device)).float().cpu().numpy()
