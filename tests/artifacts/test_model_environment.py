"""A logged model carries what it needs to load where this project is not installed (`mlflow models serve`, another
team's notebook): the `mrl` package travels inside it (MLflow code_paths: <model>/code/mrl), and requirements.txt
pins the third-party packages its code imports to the versions installed here. It never names `mrl-platform`: that
name is not this project's on the public index, so `mlflow models serve` would install whatever is published
under it.

The check is real: an image model and a text model are logged to a sqlite store, and a fresh interpreter loads
both with `mlflow.pyfunc.load_model` and predicts. That interpreter sees only what `pip install -r
requirements.txt` would give it: a folder of links to the installed files of the model's requirements and of
everything they depend on (no `mrl`, nothing else this environment happens to hold), on PYTHONPATH, with -S (no
site-packages, no .pth files: the editable install's finder is one) and an empty working directory. It first
asserts that `mrl` cannot be imported; afterwards `mrl` must have come from the model's own code/ folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mrl.core.models import build_model

from conftest import tiny_text_model

IMAGE_SPEC = {"encoder": "cnn", "dim": 16, "nesting": {"schedule": "list", "sizes": [4, 8, 16]},
              "backbone": {"channels": [4, 8]}}
TEXTS = ["a small dog", "a large boat on the river", "to run fast", "a red house"]
OURS = {"mrl-platform", "mrl", "mrlbench"}

CLEAN_LOAD = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("mrl") is None, "mrl is importable before any model is loaded"
import numpy as np
import mlflow.pyfunc
cases = json.loads(sys.argv[1])
for case in cases:
    inputs = np.load(case["inputs"]) if case["inputs"].endswith(".npy") else json.load(open(case["inputs"]))
    got = mlflow.pyfunc.load_model(case["model"]).predict(inputs)
    np.testing.assert_allclose(got, np.load(case["expected"]), rtol=1e-5, atol=1e-5)
import mrl
print(json.dumps({"mrl": mrl.__file__}))
"""


def requirement_closure(requirements: list[Requirement]) -> set[str]:
    """The requirements and, through the installed metadata, everything they depend on (extras left out)."""
    seen, stack = set(), [r.name for r in requirements]
    while stack:
        name = canonicalize_name(stack.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        stack += [r.name for r in map(Requirement, needs) if not r.marker or r.marker.evaluate({"extra": ""})]
    return seen


def site_packages_for(requirements: list[Requirement], folder: Path) -> Path:
    """A folder of links to the top-level files and folders the requirements' distributions (and their
    dependencies') installed here: what `pip install -r requirements.txt` would put in a fresh environment."""
    folder.mkdir()
    for name in sorted(requirement_closure(requirements)):
        dist = metadata.distribution(name)
        assert dist.files is not None, f"{name}: no RECORD of its installed files"
        root = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files if f.parts[0] != ".."}:
            if (root / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(root / top)
    return folder


def clean_env(site: Path, home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONPATH": str(site)}


def log_models(store: Path) -> list[dict]:
    """An image and a text model logged and downloaded; for each, its folder, inputs and expected embeddings."""
    import mlflow
    import mlflow.artifacts

    from mrl.artifacts import tracking
    from mrl.data.preprocess import embed_images

    torch.manual_seed(0)
    image_model = build_model(dict(IMAGE_SPEC)).eval()
    text_model = tiny_text_model(TEXTS * 10)
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    np.save(store / "images.npy", images)
    (store / "texts.json").write_text(json.dumps(TEXTS))
    np.save(store / "image-expected.npy", embed_images(image_model, images))
    np.save(store / "text-expected.npy", text_model.embed_texts(TEXTS))
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    # the artifacts in the temp dir too (a new experiment's default is ./mlruns, in the repository)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("environments", artifact_location=(store / "art").as_uri()))
    cases = []
    for name, model, inputs in (("image", image_model, "images.npy"), ("text", text_model, "texts.json")):
        with mlflow.start_run():
            tracking.log_model(model, f"env-{name}", {"dim": model.dim})
        folder = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/env-{name}/1", dst_path=str(store / name))
        cases.append({"model": folder, "inputs": str(store / inputs), "expected": str(store / f"{name}-expected.npy")})
    return cases


def check_requirements(model_dir: Path) -> list[Requirement]:
    """requirements.txt pins each package to the installed version and names nothing of ours."""
    lines = [ln.strip() for ln in (model_dir / "requirements.txt").read_text().splitlines() if ln.strip()]
    requirements = [Requirement(ln) for ln in lines if not ln.startswith("#")]
    assert not [r for r in requirements if canonicalize_name(r.name) in OURS], lines
    for req in requirements:
        pins = [s for s in req.specifier if s.operator == "=="]
        assert pins, f"{req} is not pinned"
        assert pins[0].version == metadata.version(req.name).split("+")[0], f"{req}: {metadata.version(req.name)} here"
    return requirements


@pytest.fixture(scope="module")
def logged(tmp_path_factory, monkeypatch_module):
    store = tmp_path_factory.mktemp("model-env")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch_module.delenv(var, raising=False)
    import mlflow

    try:
        yield store, log_models(store)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_logged_model_pins_its_requirements_and_names_no_package_of_ours(logged):
    _, cases = logged
    for case in cases:
        model_dir = Path(case["model"])
        check_requirements(model_dir)
        assert (model_dir / "code" / "mrl" / "__init__.py").is_file(), sorted(p.name for p in model_dir.iterdir())
        assert not list((model_dir / "code").rglob("__pycache__"))


def test_the_logged_model_loads_and_predicts_with_its_requirements_alone(logged):
    store, cases = logged
    requirements = [r for c in cases for r in check_requirements(Path(c["model"]))]
    site = site_packages_for(requirements, store / "site")
    empty = store / "cwd"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-S", "-c", CLEAN_LOAD, json.dumps(cases)], cwd=empty,
                          env=clean_env(site, empty), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    loaded_from = Path(json.loads(done.stdout.strip().splitlines()[-1])["mrl"])
    assert any(loaded_from.is_relative_to(Path(c["model"]) / "code") for c in cases), loaded_from


def test_the_clean_interpreter_has_the_requirements_and_nothing_else(tmp_path):
    """Without transformers among the requirements a text model's encoder cannot be imported, and mrl never can:
    the isolation can make the load fail."""
    site = site_packages_for([Requirement("torch"), Requirement("tokenizers")], tmp_path / "site")
    probe = ("import importlib.util as u; print(*(u.find_spec(m) is not None for m in "
             "('torch', 'tokenizers', 'transformers', 'mrl', 'mlflow')))")
    done = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, env=clean_env(site, tmp_path),
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["True", "True", "False", "False", "False"]
