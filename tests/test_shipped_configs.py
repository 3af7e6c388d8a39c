"""Every shipped config file loads into its typed config (torchtune's habit)."""

import pytest
import yaml

from mrl import config as C
from mrl.configio import ConfigError, from_dict, load_config
from mrlbench.reproduce import ReproduceConfig
from mrlbench.retrieval_bench import RetrievalBenchConfig
from mrlbench.sharded_bench import ShardedBenchConfig
from mrlbench.text_bench import TextBenchConfig

from conftest import REPO

SHIPPED = {
    "jobs/train.yaml": C.TrainJobConfig,
    "jobs/embed.yaml": C.EmbedJobConfig,
    "jobs/index.yaml": C.IndexJobConfig,
    "jobs/evaluate.yaml": C.EvaluateJobConfig,
    "jobs/pipeline.yaml": C.PipelineConfig,
    "jobs/pipeline_text.yaml": C.PipelineConfig,
    "tuning/search_space.yaml": C.TuneJobConfig,
    "tuning/search_space_text.yaml": C.TuneJobConfig,
    "benchmarks/text_tune_quick.yaml": C.TuneJobConfig,
    "benchmarks/text_tune.yaml": C.TuneJobConfig,
    "serving/serve.yaml": C.ServeJobConfig,
    "benchmarks/reproduce.yaml": ReproduceConfig,
    "benchmarks/reproduce_quick.yaml": ReproduceConfig,
    "benchmarks/retrieval.yaml": RetrievalBenchConfig,
    "benchmarks/text.yaml": TextBenchConfig,
    "benchmarks/text_quick.yaml": TextBenchConfig,
    # the retrieval-at-scale chain keeps its outputs apart, under outputs/scale
    "jobs/train_2048.yaml": C.TrainJobConfig,
    "jobs/embed_augmented.yaml": C.EmbedJobConfig,
    "benchmarks/retrieval_scale.yaml": RetrievalBenchConfig,
    "benchmarks/sharded_serving.yaml": ShardedBenchConfig,
    # the tune benchmark's two sweeps keep their outputs under outputs/tune-bench
    "benchmarks/tune_grid.yaml": C.TuneJobConfig,
    "benchmarks/tune_asha.yaml": C.TuneJobConfig,
}


# Configs whose data or outputs live on a cluster: they validate here as they are (configs never touch the
# filesystem); only the job's start-up path check refuses them on this machine.
CLUSTER_ONLY = {
    "jobs/train_resnet50_imagenet.yaml": (C.TrainJobConfig, ["data.path", "output_dir"]),
}
# a Ray Serve config file and a job's runtime environment, checked against Ray's own classes below
NOT_OURS = {"serving/config.yaml", "jobs/runtime_env.yaml"}


def test_every_config_file_is_covered():
    found = {str(p.relative_to(REPO)) for d in ("jobs", "tuning", "serving", "benchmarks")
             for p in (REPO / d).glob("*.yaml")}
    assert found == set(SHIPPED) | set(CLUSTER_ONLY) | NOT_OURS


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_loads(name):
    cfg = load_config(SHIPPED[name], REPO / name)
    assert cfg.output_dir in ("outputs", "outputs/scale", "outputs/tune-bench", "outputs/text")
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
    assert app.import_path == "mrl.service.app:app_builder"
    args = dict(app.args)
    args.pop("index_dir")
    cfg = from_dict(C.ServeConfig, args, prefix="serve.")  # the args are valid ServeConfig fields
    # the app's open-host check sees args.host only: it must be where the proxy listens
    assert cfg.host == raw["http_options"]["host"] and cfg.port == raw["http_options"]["port"]
    assert cfg.request_timeout_s == raw["http_options"]["request_timeout_s"]


def test_job_runtime_env_ships_the_library():
    from ray.runtime_env import RuntimeEnv

    raw = yaml.safe_load((REPO / "jobs/runtime_env.yaml").read_text())
    env = RuntimeEnv(**raw)  # Ray's own validation of the fields
    assert env["working_dir"] == "." and env["py_modules"] == ["platform/mrl"]
    assert (REPO / env["py_modules"][0] / "__init__.py").is_file()  # the path names the package, from the repo
    assert {".git/", "outputs/", ".venv/"} <= set(env["excludes"])


def test_serve_app_builder_imports():
    from ray.serve._private.utils import import_attr

    assert callable(import_attr("mrl.service.app:app_builder"))


@pytest.mark.parametrize("name", sorted(CLUSTER_ONLY))
def test_cluster_config_loads_with_local_paths(name, tmp_path):
    cls, keys = CLUSTER_ONLY[name]
    cfg = load_config(cls, REPO / name)  # validates on a laptop as on the cluster
    assert (REPO / name).read_text().startswith("#")
    assert cfg.resources.use_gpu is True
    with pytest.raises(ConfigError, match="data.path .* does not exist"):  # its real data is not on this machine
        C.check_paths(cfg)
    C.check_paths(load_config(cls, REPO / name, [f"{key}={tmp_path}" for key in keys]))


def test_resnet50_imagenet_config_runs_one_step_on_tiny_shapes(tmp_path):
    """The paper's setting (ResNet-50, d=2048, sizes 8..2048), one optimiser step on 32x32 images on CPU."""
    import numpy as np
    from PIL import Image

    from mrl.stages.train import train_local

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls_name in ("n01440764", "n01443537"):
            folder = tmp_path / "imagenet" / split / cls_name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    cfg = load_config(C.TrainJobConfig, REPO / "jobs/train_resnet50_imagenet.yaml", [
        f"data.path={tmp_path / 'imagenet'}", f"output_dir={tmp_path / 'out'}", "data.val_fraction=0.0",
        "model.image_size=32", "train.epochs=1", "train.batch_size=2", "resources.precision=fp32"])
    assert cfg.model.sizes == [8, 16, 32, 64, 128, 256, 512, 1024, 2048] and cfg.model.encoder == "resnet50"
    model = train_local(cfg, threads=2)
    assert model.dim == 2048 and model.encoder.width == 2048
    assert len(model.head.classifiers) == 9 and model.head.classifiers[-1].out_features == 1000


def test_scale_chain_configs_fit_together():
    train = load_config(C.TrainJobConfig, REPO / "jobs/train_2048.yaml")
    embed = load_config(C.EmbedJobConfig, REPO / "jobs/embed_augmented.yaml")
    bench = load_config(RetrievalBenchConfig, REPO / "benchmarks/retrieval_scale.yaml")
    assert train.model.dim == 2048 and train.model.sizes[0] == 8 and train.model.sizes[-1] == 2048
    assert embed.model_uri == f"models:/{train.mlflow.registered_model}/latest"
    assert embed.embed.augment_rows == 1_000_000 and embed.embed.dtype == "float16"
    assert train.output_dir == embed.output_dir == bench.output_dir
    assert bench.embeddings == f"{embed.output_dir}/embeddings/latest" and bench.queries == 1000
