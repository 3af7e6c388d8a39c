"""The shared preprocessing and per-batch embed path (mrl.data.preprocess): callable without Ray."""

import io

import numpy as np
import pytest
import torch

from mrl.core.models.model import build_model
from mrl.data.formats import to_float
from mrl.data.preprocess import decode_image, embed_images, inference_model, standardize

from conftest import png_declaring


def test_standardize_on_the_tensor_is_to_float_bit_for_bit():
    images = np.random.default_rng(0).integers(0, 256, size=(7, 3, 5, 4), dtype=np.uint8)
    images[0, 0, 0, :2] = [0, 255]
    got = standardize(torch.from_numpy(images))
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), to_float(images))
    assert standardize(torch.from_numpy(images), torch.bfloat16).dtype == torch.bfloat16


def test_embed_images_matches_the_model_on_standardised_floats():
    model = build_model({"encoder": "cnn", "dim": 16, "head": "mrl", "num_classes": 3,
                         "nesting": {"schedule": "list", "sizes": [8, 16]}, "backbone": {"channels": [4, 8]}})
    images = np.random.default_rng(1).integers(0, 256, size=(5, 1, 28, 28), dtype=np.uint8)
    prepared = inference_model(model, "cpu", "auto")  # auto on a CPU: float32, as trained
    assert next(prepared.parameters()).dtype == torch.float32 and not prepared.training
    with torch.no_grad():
        want = model.embed(torch.from_numpy(to_float(images))).numpy()
    got = embed_images(prepared, images)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    with pytest.raises(ValueError, match="weights are on cpu, not cuda"):
        embed_images(prepared, images, "cuda")


@pytest.mark.parametrize("precision, message", [("fp16", "precision 'fp16' is not accepted"),
                                                ("bf16", "bf16 needs an accelerator")])
def test_inference_precision_is_checked(precision, message):
    model = build_model({"encoder": "cnn", "dim": 8, "head": "none", "num_classes": 2,
                         "nesting": {"schedule": "list", "sizes": [8]}, "backbone": {"channels": [4, 8]}})
    with pytest.raises(ValueError, match=message):
        inference_model(model, "cpu", precision)


def test_a_decompression_bomb_is_a_value_error_naming_the_limit():
    bomb = png_declaring(20000, 20000)
    assert len(bomb) < 100
    with pytest.raises(ValueError, match=r"too large: .*400000000 pixels.*the limit is 16777216 pixels"):
        decode_image(bomb, 28, 1, max_pixels=4096 * 4096, formats=("PNG",))
    # one under Pillow's own limit (~179 Mpx) but over ours: refused from the header, nothing decoded
    with pytest.raises(ValueError, match=r"12000 x 12000 = 144000000 pixels, above the limit of 16777216"):
        decode_image(png_declaring(12000, 12000), 28, 1, max_pixels=4096 * 4096, formats=("PNG",))
    # without a limit (the corpus readers) Pillow's bomb check still ends as a ValueError, not its exception
    with pytest.raises(ValueError, match="too large"):
        decode_image(bomb, 28, 1)


def test_only_the_allowed_formats_are_parsed():
    from PIL import Image

    gif, png = io.BytesIO(), io.BytesIO()
    Image.new("L", (8, 8), 200).save(gif, format="GIF")
    Image.new("L", (8, 8), 200).save(png, format="PNG")
    with pytest.raises(ValueError, match=r"not a readable image \(accepted formats: PNG, JPEG\)"):
        decode_image(gif.getvalue(), 4, 1, max_pixels=100, formats=("PNG", "JPEG"))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(eps, 4, 1, max_pixels=100, formats=("PNG", "JPEG"))
    assert decode_image(png.getvalue(), 4, 1, max_pixels=64, formats=("PNG",)).shape == (1, 4, 4)
    with pytest.raises(ValueError, match="8 x 8 = 64 pixels, above the limit of 63"):
        decode_image(png.getvalue(), 4, 1, max_pixels=63, formats=("PNG",))
    with pytest.raises(ValueError, match="could not be decoded"):  # a header that promises more than it holds
        decode_image(png.getvalue()[:50], 4, 1, max_pixels=64, formats=("PNG",))


def test_a_large_jpeg_is_decoded_in_draft_mode_to_the_same_size():
    from PIL import Image

    big = io.BytesIO()
    Image.radial_gradient("L").resize((2048, 2048)).save(big, format="JPEG", quality=90)
    out = decode_image(big.getvalue(), 28, 1, max_pixels=4096 * 4096, formats=("JPEG",))
    full = decode_image(big.getvalue(), 28, 1)  # no draft: every pixel decoded
    assert out.shape == full.shape == (1, 28, 28)
    assert np.abs(out.astype(int) - full.astype(int)).mean() < 4  # the same picture, decoded at 1/8 scale
