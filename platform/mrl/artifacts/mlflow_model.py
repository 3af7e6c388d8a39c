"""The MLflow "models from code" definition of a logged `MRLModel` (see `mrl.artifacts.tracking.log_model`).

MLflow copies this file into the logged model and runs it when the model is loaded as a pyfunc; nothing is
pickled. The weights travel as the `weights` artifact: a model directory of `mrl.artifacts.model_files`
(model.safetensors + model_spec.json). The imports below resolve to the installed `mrl` where there is one, else
to the copy of the package the model carries (<model>/code/mrl, which MLflow puts on sys.path before running this
file), so the model loads where this project is not installed (tests/artifacts/test_model_environment.py).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from mrl.artifacts.model_files import load_model_dir
from mrl.artifacts.tracking import WEIGHTS_ARTIFACT
from mrl.data.formats import to_float


def as_images(data: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    """Model input as an array (N, C, H, W): numpy arrays (N, C, H, W) or (N, C*H*W), or a DataFrame whose
    rows are flattened pixels (one column per pixel, or a single column holding a pixel list per row).

    Args:
        data: the pyfunc input.
        image_shape: (C, H, W) from the model spec.

    Returns:
        The images, dtype as given (uint8 or float).
    """
    if hasattr(data, "to_numpy"):  # pandas DataFrame
        if data.shape[1] == 1 and data.dtypes.iloc[0] == object:  # one column of per-row pixel lists
            data = np.stack([np.asarray(v) for v in data.iloc[:, 0]])
        else:
            data = data.to_numpy()
    array = np.asarray(data)
    return array.reshape((-1, *image_shape))


def as_texts(data: Any) -> list[str]:
    """Model input as a list of texts: a list/array of strings, or a DataFrame whose first column holds them."""
    if hasattr(data, "iloc"):  # pandas DataFrame or Series
        data = data.iloc[:, 0] if getattr(data, "ndim", 1) == 2 else data
    return [str(t) for t in list(data)]


class MRLPyfuncModel(PythonModel):
    """pyfunc wrapper: `predict(images or texts) -> embeddings (N, d) float32`.

    Image models: uint8 images are standardised as in training (`mrl.data.sources.to_float`); float images are
    taken as already-standardised model input. Text models: strings, tokenised with the model's own tokenizer.
    """

    def load_context(self, context) -> None:
        self.model = load_model_dir(context.artifacts[WEIGHTS_ARTIFACT], device="cpu")
        spec = self.model.spec
        self.image_shape = (spec.get("in_channels", 1), spec.get("image_size", 28), spec.get("image_size", 28))

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Images (N, C, H, W) or (N, C*H*W), uint8 or standardised float (a DataFrame of flattened pixels
        also works), or for a text model a list (or one-column DataFrame) of strings -> embeddings z (N, d)
        float32."""
        import torch

        if self.model.modality == "text":
            return self.model.embed_texts(as_texts(model_input))

        images = as_images(model_input, self.image_shape)  # (N, C, H, W)
        x = to_float(images) if images.dtype == np.uint8 else images.astype(np.float32)
        with torch.no_grad():
            return self.model.embed(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()  # (N, d)


mlflow.models.set_model(MRLPyfuncModel())
