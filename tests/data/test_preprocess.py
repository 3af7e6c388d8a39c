"""The shared preprocessing and per-batch embed path (mrl.data.preprocess): callable without Ray."""

import numpy as np
import pytest
import torch

from mrl.core.models.model import build_model
from mrl.data.formats import to_float
from mrl.data.preprocess import embed_images, inference_model, standardize


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
