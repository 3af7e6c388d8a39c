"""Every shipped config file loads into its typed config (torchtune's habit)."""

import pytest
import yaml

from conftest import REPO
from mrl import config as C
from mrl.configio import load_config

SHIPPED = {
    "jobs/train.yaml": C.TrainJobConfig,
    "jobs/embed.yaml": C.EmbedJobConfig,
    "jobs/build_index.yaml": C.IndexJobConfig,
    "jobs/evaluate.yaml": C.EvaluateJobConfig,
    "jobs/pipeline.yaml": C.PipelineConfig,
    "tuning/search_space.yaml": C.TuneJobConfig,
    "serving/serve.yaml": C.ServeJobConfig,
}


def test_every_config_file_is_covered():
    found = {str(p.relative_to(REPO)) for d in ("jobs", "tuning", "serving") for p in (REPO / d).glob("*.yaml")}
    assert found == set(SHIPPED) | {"serving/config.yaml"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_loads(name):
    cfg = load_config(SHIPPED[name], REPO / name)
    assert cfg.output_dir == "outputs"
    text = (REPO / name).read_text()
    assert text.startswith("#") and "python " in text.split("\n\n")[0]  # header says how to launch


def test_pipeline_defaults_are_the_quickstart():
    cfg = load_config(C.PipelineConfig, REPO / "jobs/pipeline.yaml")
    assert cfg.model.sizes == [8, 16, 32, 64, 128, 256, 512]
    assert cfg.data.train_limit is None and cfg.serve.host == "127.0.0.1"


def test_serve_config_file_matches_rays_schema_and_our_config():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serving/config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    app = schema.applications[0]
    assert app.import_path == "mrl.serve:app_builder"
    args = dict(app.args)
    args.pop("index_dir")
    C.ServeConfig(**args)  # the args are valid ServeConfig fields


def test_serve_app_builder_imports():
    from ray.serve._private.utils import import_attr

    assert callable(import_attr("mrl.serve:app_builder"))
