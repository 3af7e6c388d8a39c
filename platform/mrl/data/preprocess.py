"""Image preprocessing shared by every place a model sees an image: the image-folder reader, the embed
stage and the service's encoder. One decode (to uint8 (C, H, W) at the model's size and channels) and one
standardise-and-embed, so a query image is embedded exactly as the corpus was."""

from __future__ import annotations

import io
import warnings

import numpy as np

from mrl.data.formats import MEAN, STD


def decode_image(data: bytes | str, image_size: int, in_channels: int, *, max_pixels: int | None = None,
                 formats: tuple[str, ...] | None = None) -> np.ndarray:
    """An encoded image (PNG, JPEG, ... as bytes, or a path) -> uint8 (C, H, W): converted to grayscale
    (in_channels 1) or RGB (3) and resized to image_size x image_size.

    For untrusted input (the service's queries) give `max_pixels` and `formats`: the size is read from the
    header and checked before any pixel is decoded, only the named Pillow formats are tried (no EPS through
    Ghostscript, no format a client picks), and a large JPEG is decoded at a reduced scale (JPEG draft mode)
    no smaller than image_size.

    Raises:
        ValueError: the data is not an image of an accepted format, is larger than max_pixels, or fails to
            decode (whatever Pillow raised: a truncated or malformed file raises many kinds of exception).
    """
    from PIL import Image, UnidentifiedImageError

    mode = "L" if in_channels == 1 else "RGB"
    try:
        with warnings.catch_warnings():  # Pillow warns above ~89 Mpx; with max_pixels the check below decides
            if max_pixels is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=formats)
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked inside open() before ours
        limit = f"the limit is {max_pixels} pixels (serve.max_image_pixels)" if max_pixels else "refused"
        raise ValueError(f"the image is too large: {exc}; {limit}") from None
    except (UnidentifiedImageError, OSError) as exc:
        accepted = f" (accepted formats: {', '.join(formats)})" if formats else ""
        raise ValueError(f"not a readable image{accepted}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's header parsers raise SyntaxError, struct.error, ...
        raise ValueError(f"not a readable image: {type(exc).__name__}: {exc}") from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"the image is {width} x {height} = {width * height} pixels, above the limit of "
                         f"{max_pixels} (serve.max_image_pixels)")
    try:
        if img.format == "JPEG" and formats is not None:
            img.draft(mode, (image_size, image_size))  # decode at 1/2, 1/4 or 1/8 scale when that still covers it
        img = img.convert(mode).resize((image_size, image_size))
    except Exception as exc:  # noqa: BLE001 - truncated data, decompression bombs, decoder errors
        raise ValueError(f"the image could not be decoded: {type(exc).__name__}: {exc}") from None
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
