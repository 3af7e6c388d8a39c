"""Safe model files: an `MRLModel` saved as a directory of plain data, loaded without ever unpickling.

Layout of a model directory:

    model.safetensors    the module's state_dict (tensors only; safetensors has no code path)
    model_spec.json      {"format": "mrl-model", "format_version": 1, "spec": <ModelConfig as a plain dict>}
    tokenizer.json       text models only: the trained tokenizer (`tokenizers` JSON), the only one they use

Loading rebuilds the module from the spec with `mrl.core.models.build_model` and copies the weights in
with `load_state_dict(strict=True)`. No class is looked up by its import path, so moving or renaming a
module never breaks a saved (or registered) model, and a file holding a pickle payload is refused instead
of executed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mrl.core.models import build_model
from mrl.data.tokenize import TextTokenizer

FORMAT = "mrl-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model_spec.json"
TOKENIZER_FILE = "tokenizer.json"


class ModelFileError(ValueError):
    """A model file is missing, malformed, of an unknown format version, or not what it claims to be.

    The message names the offending file.
    """


def tensors_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict as tensors safetensors accepts: detached, on the CPU, contiguous, unshared.

    safetensors refuses tensors that share storage (tied weights) and non-contiguous views; a tensor whose
    storage was already seen is cloned. Loading stays correct for tied parameters: `load_state_dict` copies
    the same values into the shared storage once per name.

    Args:
        model: any `nn.Module` (an `MRLModel` here).

    Returns:
        {state_dict key: tensor}, each owning its own contiguous CPU storage.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel() > 0:
            tensor = tensor.clone()  # shared storage (tied weights or a view): give it its own copy
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def save_model_dir(model, path: str | Path) -> Path:
    """Write `model` as a model directory (`model.safetensors` + `model_spec.json`).

    Args:
        model: an `MRLModel` (needs `.spec`, the plain-dict `ModelConfig` it was built from).
        path: the directory to write; created if missing, existing files of the same names are replaced.

    Returns:
        The directory path.
    """
    from safetensors.torch import save_file

    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise TypeError(f"save_model_dir needs an MRLModel with a dict .spec, got {type(model).__name__}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors_for_saving(model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": spec}
    (out / SPEC_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if getattr(model, "modality", "image") == "text":
        if model.tokenizer is None:
            raise ValueError("a text model is saved with its tokenizer; this one has none (model.tokenizer)")
        (out / TOKENIZER_FILE).write_text(model.tokenizer.to_json())
    return out


def read_spec(path: str | Path) -> dict[str, Any]:
    """The model spec stored in a model directory, after checking its format and version.

    Args:
        path: a model directory (or its `model_spec.json`).

    Returns:
        The `ModelConfig` as a plain dict, ready for `build_model`.
    """
    file = Path(path)
    if file.is_dir():
        file = file / SPEC_FILE
    try:
        doc = json.loads(file.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{file}: no model spec; not an MRL model directory") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ModelFileError(f"{file}: format is {found!r}, expected {FORMAT!r}")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{file}: format_version {version!r} is not supported "
                             f"(this mrl reads format_version {FORMAT_VERSION}); use a matching mrl release")
    if not isinstance(doc.get("spec"), dict):
        raise ModelFileError(f"{file}: 'spec' is missing or not an object")
    return doc["spec"]


def read_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, on the CPU. Anything else (a pickle, a torch.save zip) is refused.

    Args:
        file: path to a `.safetensors` file.

    Returns:
        {name: tensor}.
    """
    from safetensors.torch import load_file

    file = Path(file)
    if not file.is_file():
        raise ModelFileError(f"{file}: weights file is missing")
    try:
        # safetensors parses a JSON header plus raw buffers; it has no path that runs code.
        return load_file(str(file), device="cpu")
    except Exception as exc:  # SafetensorError (bad header), OSError, ...: all mean "not our file"
        raise ModelFileError(f"{file}: not a valid safetensors file ({type(exc).__name__}: {exc}); "
                             "refusing to load it (model weights are never unpickled)") from None


def load_model_dir(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the `MRLModel` saved in a model directory, in eval mode.

    Args:
        path: a directory written by `save_model_dir`.
        device: where to put the model.

    Returns:
        The `MRLModel` with `.spec` equal to the saved spec.
    """

    path = Path(path)
    spec = read_spec(path)
    weights = read_weights(path / WEIGHTS_FILE)
    model = build_model(spec)
    try:
        model.load_state_dict(weights, strict=True)  # every key present, every shape equal
    except RuntimeError as exc:
        raise ModelFileError(f"{path / WEIGHTS_FILE}: weights do not match the spec in {SPEC_FILE}: {exc}") from None
    if model.modality == "text":
        model.tokenizer = read_tokenizer(path / TOKENIZER_FILE, model.spec)
    return model.to(device).eval()


def read_tokenizer(file: str | Path, spec: dict[str, Any]):
    """A text model's tokenizer, checked against the spec's vocabulary size.

    Raises:
        ModelFileError: the file is missing, not a tokenizer, or has more tokens than the model's embedding table.
    """

    file = Path(file)
    text = spec.get("text") or {}
    try:
        tokenizer = TextTokenizer.from_json(file.read_text(), int(text.get("max_tokens", 64)))
    except FileNotFoundError:
        raise ModelFileError(f"{file}: a text model needs its tokenizer beside the weights; it is missing") from None
    except Exception as exc:  # tokenizers raises its own Exception type for a malformed file
        raise ModelFileError(f"{file}: not a tokenizer file ({type(exc).__name__}: {exc})") from None
    vocab = int(text.get("vocab_size", 8192))
    if tokenizer.vocab_size > vocab:
        raise ModelFileError(f"{file}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding "
                             f"table holds {vocab} (text.vocab_size)")
    return tokenizer
