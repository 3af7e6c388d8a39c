"""Safe model files: safetensors + JSON spec round trips, pickle payloads are refused (and never run),
checkpoints load with weights_only=True, and MLflow-logged models hold no pickle.

Regenerate the committed fixture (only when the format changes, into a new format_version directory):
    PYTHONPATH=tests python tests/artifacts/test_model_files.py
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl.artifacts.model_files import (
    FORMAT,
    FORMAT_VERSION,
    SPEC_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    load_model_dir,
    read_spec,
    save_model_dir,
    tensors_for_saving,
)
from mrl.core.models import build_model

from conftest import REPO

SMALL_SPEC = {"encoder": "cnn", "dim": 16, "nesting": {"schedule": "list", "sizes": [4, 8, 16]},
              "backbone": {"channels": [4, 8]}}
FIXTURE = REPO / "tests" / "fixtures" / "model_v1"
# The fixture model: 8x8 single-channel images keep the file to a few KB.
FIXTURE_SPEC = {"encoder": "cnn", "dim": 16, "head": "mrl", "num_classes": 3, "in_channels": 1, "image_size": 8,
                "nesting": {"schedule": "list", "sizes": [4, 8, 16]}, "backbone": {"channels": [4, 8]}}


class Payload:
    """Unpickling this runs `touch <marker>`: the kind of file a malicious model upload would be."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def small_model(seed: int = 0, spec: dict | None = None):
    torch.manual_seed(seed)
    return build_model(dict(spec or SMALL_SPEC)).eval()


def fixture_input() -> torch.Tensor:
    """A fixed (2, 1, 8, 8) input for the fixture model (numpy's generator is stable across versions)."""
    return torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))


def build_fixture_model():
    """The tiny model of tests/fixtures/model_v1, with non-trivial BatchNorm buffers so they are checked too."""
    model = small_model(seed=1, spec=FIXTURE_SPEC)
    gen = torch.Generator().manual_seed(2)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            module.num_batches_tracked.fill_(7)
    return model.eval()


def write_fixture(path: Path = FIXTURE) -> None:
    model = build_fixture_model()
    save_model_dir(model, path)
    with torch.no_grad():
        z = model.embed(fixture_input())  # (2, 16)
    expected = {"input": "numpy default_rng(0).standard_normal((2, 1, 8, 8)) float32",
                "embed_rounded": np.round(z.double().numpy(), 4).tolist(), "embed_sum": round(float(z.sum()), 4)}
    (path / "expected.json").write_text(json.dumps(expected) + "\n")


def write_spec(path: Path, **changes) -> None:
    doc = json.loads((path / SPEC_FILE).read_text())
    doc.update(changes)
    (path / SPEC_FILE).write_text(json.dumps(doc))


# --- round trip ------------------------------------------------------------------------------------------

def test_round_trip_same_embeddings_and_logits(tmp_path):
    model = small_model()
    out = save_model_dir(model, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE, SPEC_FILE]
    doc = json.loads((out / SPEC_FILE).read_text())
    assert doc["format"] == FORMAT and doc["format_version"] == FORMAT_VERSION and doc["spec"] == SMALL_SPEC

    loaded = load_model_dir(out)
    assert not loaded.training and loaded.dim == 16 and loaded.sizes == [4, 8, 16] and loaded.spec == SMALL_SPEC
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.embed(x), loaded.embed(x))
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)


def test_round_trip_mrl_e_head(tmp_path):
    model = small_model(spec={**SMALL_SPEC, "head": "mrl_e"})
    loaded = load_model_dir(save_model_dir(model, tmp_path / "m"))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x)))


def test_shared_and_non_contiguous_tensors_are_saved():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = torch.nn.Linear(4, 4)
            self.b.weight = self.a.weight  # tied: one storage under two names
            self.register_buffer("t", torch.randn(4, 3).T)  # a non-contiguous view

    from safetensors.torch import save

    tensors = tensors_for_saving(Tied())
    assert all(t.is_contiguous() for t in tensors.values())
    assert tensors["a.weight"].untyped_storage().data_ptr() != tensors["b.weight"].untyped_storage().data_ptr()
    assert torch.equal(tensors["a.weight"], tensors["b.weight"])
    save(tensors)  # safetensors refuses shared or non-contiguous tensors; these pass


# --- refusals --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("writer", ["pickle", "torch_save"])
def test_pickle_payload_as_safetensors_is_refused_and_not_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    out = save_model_dir(small_model(), tmp_path / "m")
    weights = out / WEIGHTS_FILE
    if writer == "pickle":
        weights.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save(Payload(marker), weights)

    with pytest.raises(ModelFileError, match=re.escape(str(weights))) as err:
        load_model_dir(out)
    assert "not a valid safetensors file" in str(err.value)
    assert not marker.exists()


def test_payload_is_live(tmp_path):
    """Control for the refusal test: unpickling the same payload does run it."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_wrong_format_version_is_refused(tmp_path):
    out = save_model_dir(small_model(), tmp_path / "m")
    write_spec(out, format_version=2)
    with pytest.raises(ModelFileError, match=r"format_version 2 is not supported") as err:
        load_model_dir(out)
    assert str(out / SPEC_FILE) in str(err.value)


def test_wrong_format_and_missing_spec_are_refused(tmp_path):
    out = save_model_dir(small_model(), tmp_path / "m")
    write_spec(out, format="something-else")
    with pytest.raises(ModelFileError, match="format is 'something-else'"):
        read_spec(out)
    (out / SPEC_FILE).unlink()
    with pytest.raises(ModelFileError, match="no model spec"):
        load_model_dir(out)


def test_weights_not_matching_spec_are_refused(tmp_path):
    out = save_model_dir(small_model(), tmp_path / "m")
    doc = json.loads((out / SPEC_FILE).read_text())
    write_spec(out, spec={**doc["spec"], "dim": 32, "nesting": {"schedule": "list", "sizes": [4, 8, 32]}})
    with pytest.raises(ModelFileError, match="do not match the spec"):
        load_model_dir(out)


# --- training checkpoints --------------------------------------------------------------------------------

def checkpoint_state(model) -> dict:
    """A checkpoint shaped as run_loop's rank 0 writes it (AdamW + LambdaLR with a plain lambda)."""
    from mrl.stages.train import lr_factor

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, 10))
    sum(o.sum() for o in model(torch.randn(2, 1, 28, 28))).backward()
    optimizer.step()
    scheduler.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": 0, "model_spec": dict(SMALL_SPEC)}


class DirCheckpoint:
    """Stands in for ray.train.Checkpoint: only `as_directory()` is used."""

    def __init__(self, path: Path):
        self.path = path

    @contextmanager
    def as_directory(self):
        yield str(self.path)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    from mrl.stages.train import CHECKPOINT_FILE, load_checkpoint_model, read_checkpoint

    model = small_model().train()
    state = checkpoint_state(model)
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    restored = read_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert restored["epoch"] == 0 and restored["model_spec"] == SMALL_SPEC
    assert restored["scheduler"]["lr_lambdas"] == [None]  # the lambda itself is never saved
    rebuilt = load_checkpoint_model(DirCheckpoint(tmp_path))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval().embed(x), rebuilt.embed(x))


def test_checkpoint_with_pickle_payload_is_refused(tmp_path):
    from mrl.stages.train import CHECKPOINT_FILE, load_checkpoint_model, read_checkpoint

    marker = tmp_path / "pwned"
    state = checkpoint_state(small_model().train())
    state["model_spec"] = Payload(marker)
    path = tmp_path / CHECKPOINT_FILE
    torch.save(state, path)
    with pytest.raises(ModelFileError, match=re.escape(str(path))) as err:
        read_checkpoint(path)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    with pytest.raises(ModelFileError):
        load_checkpoint_model(DirCheckpoint(tmp_path))
    path.write_bytes(pickle.dumps(Payload(marker)))  # a bare pickle, not torch's zip container
    with pytest.raises(ModelFileError):
        read_checkpoint(path)
    assert not marker.exists()


def test_no_weights_only_false_in_platform():
    found = subprocess.run(["grep", "-rn", "--include=*.py", "weights_only=False", str(REPO / "platform")],
                           capture_output=True, text=True)
    assert found.returncode == 1 and found.stdout == "", found.stdout


# --- compatibility ---------------------------------------------------------------------------------------

def test_committed_v1_fixture_still_loads():
    """A model saved before a module move (or any refactor) still loads: nothing refers to class paths."""
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert read_spec(FIXTURE) == FIXTURE_SPEC
    model = load_model_dir(FIXTURE)
    assert model.dim == 16 and model.sizes == [4, 8, 16]
    assert model.encoder.fc[-1].weight.shape == (16, 8 * 2 * 2)  # (d, c2 * (8 // 4) ** 2)
    assert [clf.weight.shape for clf in model.head.classifiers] == [(3, 4), (3, 8), (3, 16)]
    with torch.no_grad():
        z = model.embed(fixture_input())
    assert z.shape == (2, 16)
    np.testing.assert_allclose(z.numpy(), np.array(expected["embed_rounded"]), atol=2e-4)
    assert float(z.sum()) == pytest.approx(expected["embed_sum"], abs=1e-3)
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) < 16_000


# --- MLflow ----------------------------------------------------------------------------------------------

def test_mlflow_logged_model_has_no_pickle_and_loads_back(tmp_path, monkeypatch):
    import mlflow
    import mlflow.artifacts
    from safetensors import safe_open

    from mrl.artifacts import tracking

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)  # restored after the test; set_* below write them
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.create_experiment("safe-models", artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_experiment("safe-models")
    model = small_model()
    try:
        with mlflow.start_run():
            info = tracking.log_model(model, "tiny-mrl", {"dim": model.dim, "sizes": model.sizes})
        assert str(info.registered_model_version) == "1" and info.model_uri

        uri = "models:/tiny-mrl/1"
        assert mlflow.models.get_model_info(uri).metadata == {"dim": 16, "sizes": [4, 8, 16]}
        loaded = tracking.load_model(uri)
        assert not loaded.training and loaded.spec == SMALL_SPEC
        x = torch.randn(4, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(model.embed(x), loaded.embed(x))

        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "dl")))
        files = [p for p in root.rglob("*") if p.is_file()]
        names = {p.relative_to(root).as_posix() for p in files}
        assert {"MLmodel", "mlflow_model.py", "artifacts/weights/model.safetensors",
                "artifacts/weights/model_spec.json"} <= names
        assert "python_model.pkl" not in names and "data/model.pth" not in names
        for file in files:
            assert file.suffix not in {".pkl", ".pickle", ".pth", ".pt", ".joblib"}, file
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt"):
                    pass
            else:  # no pickle stream (protocol >= 2 starts with 0x80) and no torch.save zip
                head = file.read_bytes()[:2]
                assert head != b"PK" and not head.startswith(b"\x80"), file

        import mlflow.pyfunc  # the pyfunc view (models from code) gives the same embeddings

        images = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
        from mrl.data.preprocess import embed_images
        np.testing.assert_allclose(mlflow.pyfunc.load_model(uri).predict(images), embed_images(model, images),
                                   rtol=1e-6, atol=1e-6)
    finally:
        mlflow.set_tracking_uri(None)


def test_load_model_refuses_a_model_without_weights_dir(tmp_path):
    from mrl.artifacts import tracking

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(ModelFileError, match="not logged by"):
        tracking.load_model(str(tmp_path / "m"))


def test_load_model_accepts_a_bare_model_dir(tmp_path):
    from mrl.artifacts import tracking

    model = small_model()
    loaded = tracking.load_model(str(save_model_dir(model, tmp_path / "m")))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.embed(x), loaded.embed(x))


if __name__ == "__main__":
    write_fixture()
    print(f"wrote {FIXTURE}")


def test_a_text_model_logs_its_tokenizer_and_predicts_from_strings(tmp_path, monkeypatch):
    """A text model in MLflow carries tokenizer.json beside its weights; the pyfunc takes strings."""
    import mlflow
    import mlflow.pyfunc

    from mrl.artifacts import tracking

    from conftest import tiny_text_model

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.create_experiment("text-models", artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_experiment("text-models")
    texts = ["a small dog", "a large boat on the river", "to run fast", "a red house"] * 10
    model = tiny_text_model(texts)
    try:
        with mlflow.start_run():
            tracking.log_model(model, "tiny-text", {"dim": 16})
        uri = "models:/tiny-text/1"
        loaded = tracking.load_model(uri)
        assert loaded.tokenizer.to_json() == model.tokenizer.to_json()
        expected = model.embed_texts(texts[:4])
        np.testing.assert_allclose(loaded.embed_texts(texts[:4]), expected, atol=1e-6)
        np.testing.assert_allclose(mlflow.pyfunc.load_model(uri).predict(texts[:4]), expected, atol=1e-6)
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "dl")))
        assert (root / "artifacts" / "weights" / "tokenizer.json").is_file()
    finally:
        mlflow.set_tracking_uri(None)
