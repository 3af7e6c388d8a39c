"""MLflow helpers: where the store is, experiments, lineage tags, and model logging.

Lineage is kept with tags on every run: `mrl.stage` (train, tune, embed, index, evaluate, serve) and
`mrl.input_run_id` / `mrl.input_uri` naming what the stage consumed; the tag names below are the only contract
between the stages that write them and `mrl.artifacts.lineage`, which reads them.
"""

from __future__ import annotations

import os
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mrl import storage
from mrl.artifacts.datasets import dataset_digest, file_digests
from mrl.artifacts.model_files import SPEC_FILE, ModelFileError, load_model_dir, save_model_dir
from mrl.configio import flatten

TAG_STAGE = "mrl.stage"  # which stage made the run
TAG_INPUT_RUN = "mrl.input_run_id"  # the run that made the stage's input
TAG_INPUT_URI = "mrl.input_uri"  # the input itself: a model URI or a directory
TAG_OUTPUT = "mrl.output_path"  # the directory the stage wrote
TAG_CHECKPOINT = "mrl.checkpoint"  # train: the final Ray Train checkpoint, as a URI
TAG_URL = "mrl.url"  # serve: where the service answers
TAG_SWEEP = "mrl.sweep"  # tune: the sweep's name
TAG_EMBED_RUN_NAME = "mrl.embed_run_name"  # embed: the output directory's name
TAG_DATA_DIGEST = "mrl.data_digest"  # train: sha256 over the training data's files (names, sizes, contents)
TAG_DATA_PATH = "mrl.data_path"  # train: where those files are (a directory or one file)
DATA_FILES_ARTIFACT = "dataset/files.json"  # train: each data file's size and sha256, to name what changed
DATA_FILES_LOGGED = 100_000  # larger file lists are not logged (the digest alone is checked)
MLFLOW_DIGEST_CHARS = 32  # MLflow's dataset digest holds 36 characters: the first 32 hex digits of the digest

MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the pyfunc "model from code" of a logged model
MODEL_PACKAGE = Path(__file__).resolve().parents[1]  # the `mrl` package: shipped in every logged model (code/mrl)
# What a logged model's code imports when it loads and predicts (the `mrl` package travels with it), installed
# by `mlflow models serve` at the versions this process runs. `mrl-platform` is not among them: that name is
# not ours on the public index, so whatever is published under it would be installed.
MODEL_DEPENDENCIES = ("torch", "numpy", "safetensors", "tokenizers", "transformers", "pyyaml")
WEIGHTS_ARTIFACT = "weights"  # artifact key (and folder under <model>/artifacts/) of the model directory


def resolve_tracking_uri(mlflow_cfg, output_dir: str) -> str:
    """The configured URI, else MLflow's embedded sqlite store at <output_dir>/mlflow.db (absolute path)."""
    if mlflow_cfg.tracking_uri:
        return mlflow_cfg.tracking_uri
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def setup(mlflow_cfg, output_dir: str) -> str:
    """Point MLflow at the store and make the experiment current; returns the tracking URI.

    The experiment is created here, on the driver, before any worker writes (sqlite has one writer).
    """
    import mlflow

    uri = resolve_tracking_uri(mlflow_cfg, output_dir)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # Ray workers and Tune trials inherit it
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(mlflow_cfg.experiment) is None:
        artifacts = None
        if uri.startswith("sqlite:"):
            artifacts = (Path(output_dir).resolve() / "mlartifacts").as_uri()
        mlflow.create_experiment(mlflow_cfg.experiment, artifact_location=artifacts)
    mlflow.set_experiment(mlflow_cfg.experiment)
    return uri


def ui_hint(uri: str) -> str:
    """How to open the MLflow UI on this store."""
    return f"mlflow ui --backend-store-uri '{uri}' --port 5000   (then open http://127.0.0.1:5000)"


def log_params(params: dict[str, Any]) -> None:
    """Log flattened params; values are stringified and clipped to MLflow's 6000-character limit."""
    import mlflow

    flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[i:i + 100]))


def log_dataset(name: str, location: str | Path, cache: Path | None = None, context: str = "training") -> str:
    """Record the dataset at `location` in the active run by its content: an MLflow dataset input (its digest
    the first 32 hex digits), the full digest and the location as tags, and each file's size and sha256 as the
    artifact `dataset/files.json` (`mrl lineage` re-checks them). Returns the digest.

    Args:
        name: the dataset's name ("fashion_mnist-train").
        location: a directory (every file under it) or one file; see `mrl.artifacts.datasets`.
        cache: the file-digest cache (`datasets.digest_cache(output_dir)`), or None to hash every file.
    """
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    location = storage.absolute(location) if storage.is_remote(location) else Path(location).resolve()
    files = file_digests(location, cache)
    digest = dataset_digest(files)
    with warnings.catch_warnings():  # MLflow 3.17 registers its local-file source twice and says it is ambiguous
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source(str(location))
    mlflow.log_input(MetaDataset(source=source, name=name, digest=digest[:MLFLOW_DIGEST_CHARS]), context=context)
    mlflow.set_tags({TAG_DATA_DIGEST: digest, TAG_DATA_PATH: str(location)})
    if len(files) <= DATA_FILES_LOGGED:
        mlflow.log_dict({"location": str(location), "digest": digest, "files": files}, DATA_FILES_ARTIFACT)
    return digest


def model_pip_requirements() -> list[str]:
    """MODEL_DEPENDENCIES pinned to the installed versions (a local label such as +cpu dropped: the index has none)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in MODEL_DEPENDENCIES]


def log_model(model, registered_model: str | None, metadata: dict[str, Any]):
    """Log an `MRLModel` to the active MLflow run without pickle, and register it.

    The model is an MLflow "models from code" pyfunc: `mrl/artifacts/mlflow_model.py` is the code, the `mrl`
    package travels with it (code_paths: <model>/code/mrl, so it loads where mrl is not installed), and the
    `weights` artifact is a `mrl.artifacts.model_files` directory (model.safetensors + model_spec.json).
    `load_model` reads that directory back; `mlflow.pyfunc.load_model` also works (predict -> embeddings).

    Args:
        model: the trained `MRLModel`.
        registered_model: registry name to register a new version under (None: log only).
        metadata: stored in the MLmodel file (`mlflow.models.get_model_info(uri).metadata`).

    Returns:
        The MLflow ModelInfo (has model_uri, registered_model_version).
    """
    import tempfile

    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        weights = save_model_dir(model, Path(tmp) / WEIGHTS_ARTIFACT)  # copied into the run's artifacts
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL_CODE), artifacts={WEIGHTS_ARTIFACT: str(weights)},
            registered_model_name=registered_model, pip_requirements=model_pip_requirements(), metadata=metadata,
            code_paths=[str(MODEL_PACKAGE)],
        )


def describe_model(model_uri: str) -> dict[str, Any]:
    """Name, version and producing run of a registered-model URI (models:/name/version|latest|@alias)."""
    from mlflow import MlflowClient

    info: dict[str, Any] = {"model_uri": model_uri}
    if not model_uri.startswith("models:/"):
        return info
    client = MlflowClient()
    rest = model_uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, _, version = rest.partition("/")
        if version in ("", "latest"):
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise LookupError(f"registered model {name!r} has no versions; run the train stage first")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            mv = client.get_model_version(name, version)
    info.update(model_name=mv.name, model_version=str(mv.version), model_run_id=mv.run_id,
                model_uri=f"models:/{mv.name}/{mv.version}")
    return info


def load_model(model_uri: str):
    """Load a logged `MRLModel` on the CPU, in eval mode, from its safetensors weights (never unpickled).

    Args:
        model_uri: models:/name/version (or @alias, or latest), runs:/..., any MLflow artifact URI of a model
            logged by `log_model`, or a local model directory written by `model_files.save_model_dir`.

    Returns:
        The `MRLModel`.
    """
    import mlflow.artifacts

    local = Path(model_uri)
    if (local / SPEC_FILE).is_file():  # a bare model directory
        return load_model_dir(local, device="cpu")
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    weights = root / "artifacts" / WEIGHTS_ARTIFACT
    if not (weights / SPEC_FILE).is_file():
        raise ModelFileError(f"{model_uri}: no {WEIGHTS_ARTIFACT}/{SPEC_FILE} in the logged model (found "
                             f"{sorted(p.name for p in root.iterdir())}); it was not logged by "
                             "mrl.artifacts.tracking.log_model (models pickled by mlflow.pytorch are not loaded: "
                             "retrain or re-log them)")
    return load_model_dir(weights, device="cpu")


CHAMPION = "champion"  # the registry alias the embed stage loads by default


def promote(model_uri: str, alias: str = CHAMPION) -> dict[str, Any]:
    """Point the registered model's `alias` (models:/name@alias) at the version `model_uri` names.

    Returns:
        {"model_name", "model_version", "alias", "previous"} (previous: the version the alias named, or None).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    info = describe_model(model_uri)
    if "model_version" not in info:
        raise ValueError(f"{model_uri} is not a registered model version (models:/name/version or @alias)")
    client = MlflowClient()
    try:
        previous = client.get_model_version_by_alias(info["model_name"], alias).version
    except MlflowException:
        previous = None
    client.set_registered_model_alias(info["model_name"], alias, info["model_version"])
    return {"model_name": info["model_name"], "model_version": info["model_version"], "alias": alias,
            "previous": None if previous is None else str(previous)}


def promote_if_first(model_name: str, version: str, alias: str = CHAMPION) -> bool:
    """Give `alias` to this version when the registered model has no such alias yet (its first model)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_model_version_by_alias(model_name, alias)
        return False
    except MlflowException:
        client.set_registered_model_alias(model_name, alias, version)
        return True
