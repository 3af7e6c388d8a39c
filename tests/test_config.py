"""Range checks of the stage configs (mrl.config)."""

import pytest

from mrl.config import (
    DataConfig,
    EmbedConfig,
    EmbedJobConfig,
    EvalConfig,
    EvaluateJobConfig,
    IndexConfig,
    IndexJobConfig,
    ModelConfig,
    NestingConfig,
    PipelineConfig,
    RayConfig,
    ResourcesConfig,
    ServeConfig,
    ServeJobConfig,
    TrainConfig,
    TrainJobConfig,
    TuneJobConfig,
    TuneSpace,
    check_paths,
)
from mrl.configio import ConfigError, from_dict, load_config, to_dict
from mrl.retrieval.modes import SearchSettings


def _list(*sizes, weights=None):
    return NestingConfig(schedule="list", sizes=tuple(sizes), weights=weights)


# ---------------------------------------------------------------- ModelConfig / NestingConfig

def test_model_defaults():
    cfg = ModelConfig()
    assert cfg.sizes == [8, 16, 32, 64, 128, 256, 512]
    assert cfg.weights == [1.0] * 7


def test_model_schedules():
    assert ModelConfig(dim=64, nesting=NestingConfig(min_size=16)).sizes == [16, 32, 64]
    assert ModelConfig(dim=64, nesting=NestingConfig(schedule="uniform", count=4)).sizes == [8, 27, 45, 64]
    cfg = ModelConfig(dim=64, nesting=_list(4, 32, weights=(2.0, 1.0)))
    assert cfg.sizes == [4, 32] and cfg.weights == [2.0, 1.0]


# Messages relative to ModelConfig; loading a job config prefixes them with "model.".
BAD_NESTING = [
    (_list(16, 8, 64), r"nesting: nesting list \[16, 8, 64\] is not sorted"),
    (_list(8, 8, 64), r"nesting: nesting list \[8, 8, 64\] has duplicate sizes \[8\]"),
    (_list(8, 128), r"nesting: nesting size #1 is 128, outside the accepted range \[1, dim=64\]"),
    (_list(0, 8), r"nesting: nesting size #0 is 0"),
    (NestingConfig(schedule="list"), r"nesting: schedule 'list' needs nesting\.sizes"),
    (NestingConfig(min_size=65), r"nesting: min_size must be in \[1, dim=64\]"),
    (NestingConfig(schedule="uniform", count=100), r"nesting: count=100 is more than"),
    (_list(8, 64, weights=(1.0,)), r"nesting\.weights: 1 loss weights given for 2 nesting sizes"),
    (_list(8, 64, weights=(1.0, -1.0)), r"nesting\.weights: loss weight #1 \(size 64\) is -1\.0"),
    (_list(8, 64, weights=(0.0, 0.0)), r"nesting\.weights: all loss weights are 0"),
]


@pytest.mark.parametrize("nesting, match", BAD_NESTING)
def test_model_rejects_bad_nesting(nesting, match):
    with pytest.raises(ConfigError, match="^" + match):
        ModelConfig(dim=64, nesting=nesting)


@pytest.mark.parametrize("nesting, match", BAD_NESTING)
def test_bad_nesting_in_a_job_config_names_the_full_path(tmp_path, nesting, match):
    data = {"data": {"path": str(tmp_path)}, "model": {"dim": 64, "nesting": to_dict(nesting)}}
    with pytest.raises(ConfigError, match=r"^model\." + match):
        from_dict(TrainJobConfig, data)


def test_nesting_errors_through_from_dict_name_the_field():
    with pytest.raises(ConfigError, match=r"^model\.nesting: nesting list \[32, 16\] is not sorted"):
        from_dict(ModelConfig, {"dim": 64, "nesting": {"schedule": "list", "sizes": [32, 16]}}, prefix="model.")


def test_nesting_error_in_a_job_config_is_not_double_prefixed(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.nesting: nesting size #1 is 1024"):
        load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}", "model.nesting.schedule=list",
                                               "model.nesting.sizes=[8, 1024]"])


def test_nested_model_error_names_its_real_dotted_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        from_dict(TuneJobConfig, {"base": {"data": {"path": str(tmp_path)}, "model": {"dim": 0}}})
    assert "base.model.model" not in str(info.value)
    assert str(info.value) == "base.model.dim must be > 0, got 0"


def test_nested_section_error_under_tune_base_names_its_real_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match=r"^base\.resources\.threads_per_worker must be > 0, got 0$"):
        load_config(TuneJobConfig, overrides=[f"base.data.path={tmp_path}", "base.resources.threads_per_worker=0"])
    with pytest.raises(ConfigError, match=r"^base\.model\.nesting: nesting list \[32, 16\] is not sorted"):
        load_config(TuneJobConfig, overrides=[f"base.data.path={tmp_path}", "base.model.nesting.schedule=list",
                                              "base.model.nesting.sizes=[32, 16]"])


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 0}, r"dim must be > 0, got 0"),
    ({"num_classes": 1}, r"num_classes must be >= 2, got 1"),
    ({"in_channels": 2}, r"in_channels must be 1 or 3, got 2"),
    ({"image_size": 0}, r"image_size must be > 0, got 0"),
])
def test_model_ranges(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match="^" + match + "$"):
        ModelConfig(**{"dim": 64, **kwargs})
    with pytest.raises(ConfigError, match=r"^model\." + match + "$"):
        from_dict(TrainJobConfig, {"data": {"path": str(tmp_path)}, "model": {"dim": 64, **kwargs}})


def test_model_pretrained_path(tmp_path):
    assert ModelConfig(encoder="vit", pretrained_path=str(tmp_path)).pretrained_path == str(tmp_path)
    with pytest.raises(ConfigError, match=r"^pretrained_path is only for transformers encoders"):
        ModelConfig(encoder="cnn", pretrained_path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^model\.pretrained_path is only for transformers encoders"):
        load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}", f"model.pretrained_path={tmp_path}"])
    # a missing directory is the job's problem, not the config's: it loads, and check_paths names it
    cfg = load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}", "model.encoder=vit",
                                                 f"model.pretrained_path={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match=r"^model\.pretrained_path .*missing.* is not a directory"):
        check_paths(cfg)


# ---------------------------------------------------------------- DataConfig and check_paths

def test_configs_never_touch_the_filesystem(tmp_path):
    """A cluster's config validates on a laptop: paths are checked by check_paths when the job starts."""
    missing = tmp_path / "no-fmnist"
    cfg = load_config(TrainJobConfig, overrides=[f"data.path={missing}"])
    assert DataConfig(path=str(missing)).root == str(missing)
    with pytest.raises(ConfigError) as info:
        check_paths(cfg)
    msg = str(info.value)
    assert msg.startswith(f"data.path {str(missing)!r} does not exist (fashion_mnist data)")
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "or give a directory holding the four IDX files" in msg
    check_paths(load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}"]))  # an existing path passes


def test_check_paths_names_nested_sections(tmp_path):
    from mrl.config import TuneJobConfig

    missing = tmp_path / "no-images"
    cfg = load_config(TuneJobConfig, overrides=["base.data.source=image_folder", f"base.data.path={missing}"])
    with pytest.raises(ConfigError, match=r"^base\.data\.path .*no-images.* does not exist \(image_folder data\)") as info:
        check_paths(cfg)
    assert "apt-get" not in str(info.value)


@pytest.mark.parametrize("cls, override, match", [
    (TrainJobConfig, "output_dir=s3://bucket/out", r"^output_dir 's3://bucket/out' must be a local directory .*"
                                                   r"artifacts_dir"),
    (EmbedJobConfig, "artifacts_dir=s3://AKIA:secret@bucket/mrl", r"^artifacts_dir .* carries credentials; give them "
                                                                  r"in the environment"),
    (IndexJobConfig, "embeddings=s3://bucket/e?endpoint_override=x", r"^embeddings .* has query options"),
    (ServeJobConfig, "index_dir=ftp://host/index", r"^index_dir 'ftp://host/index' has scheme 'ftp'"),
    (TrainJobConfig, "data.path=s3:///no-bucket", r"^data\.path 's3:///no-bucket' names no bucket"),
    (TrainJobConfig, "storage_path=gs://u:p@bucket/ray", r"^storage_path .* carries credentials"),
])
def test_a_location_that_cannot_be_used_is_refused_when_the_config_loads(cls, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(cls, overrides=[override])


def test_artifacts_dir_moves_every_stages_default_input_into_the_bucket():
    assert load_config(IndexJobConfig, overrides=["artifacts_dir=s3://b/mrl"]).embeddings == \
        "s3://b/mrl/embeddings/latest"
    assert load_config(ServeJobConfig, overrides=["artifacts_dir=s3://b/mrl/"]).index_dir == "s3://b/mrl/index/latest"
    assert load_config(PipelineConfig, overrides=["artifacts_dir=s3://b/mrl"]).train_job().artifacts == "s3://b/mrl"
    assert load_config(IndexJobConfig, overrides=["output_dir=out"]).embeddings == "out/embeddings/latest"


def test_data_path_required_for_non_default_sources():
    with pytest.raises(ConfigError, match=r"^path is required when source is 'parquet'"):
        DataConfig(source="parquet")
    with pytest.raises(ConfigError, match=r"^data\.path is required when source is 'parquet'"):
        load_config(TrainJobConfig, overrides=["data.source=parquet"])


def test_data_existing_path(tmp_path):
    cfg = DataConfig(source="parquet", path=str(tmp_path), val_fraction=0.0, train_limit=5)
    assert cfg.root == str(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    ({"val_fraction": 0.5}, r"val_fraction must be in \[0, 0\.5\), got 0\.5"),
    ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 0\.5\), got -0\.1"),
    ({"train_limit": 0}, r"train_limit must be > 0, got 0"),
    ({"test_limit": -3}, r"test_limit must be > 0, got -3"),
])
def test_data_ranges(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match="^" + match + "$"):
        DataConfig(path=str(tmp_path), **kwargs)
    with pytest.raises(ConfigError, match=r"^data\." + match + "$"):
        from_dict(TrainJobConfig, {"data": {"path": str(tmp_path), **kwargs}})


# ---------------------------------------------------------------- other sections

# (section class, job config holding it, its key there, bad values, message relative to the section)
SECTION_RANGES = [
    (TrainConfig, TrainJobConfig, "train", {"epochs": 0}, r"epochs must be > 0, got 0"),
    (TrainConfig, TrainJobConfig, "train", {"batch_size": -1}, r"batch_size must be > 0, got -1"),
    (TrainConfig, TrainJobConfig, "train", {"lr": 0.0}, r"lr must be in \(0, 10\), got 0\.0"),
    (TrainConfig, TrainJobConfig, "train", {"weight_decay": -1e-4}, r"weight_decay must be >= 0, got -0\.0001"),
    (ResourcesConfig, TrainJobConfig, "resources", {"num_workers": 0}, r"num_workers must be >= 1, got 0"),
    (ResourcesConfig, TrainJobConfig, "resources", {"threads_per_worker": 0},
     r"threads_per_worker must be > 0, got 0"),
    (RayConfig, TrainJobConfig, "ray", {"num_cpus": 0}, r"num_cpus must be > 0, got 0"),
    (EmbedConfig, EmbedJobConfig, "embed", {"splits": ()},
     r"splits must name at least one of \['train', 'test'\]"),
    (EvalConfig, EvaluateJobConfig, "evaluate", {"k": 0}, r"k must be > 0, got 0"),
    (IndexConfig, IndexJobConfig, "index", {"sizes": (16, 8)}, r"sizes: nesting list \[16, 8\] is not sorted"),
    (IndexConfig, IndexJobConfig, "index", {"hnsw_m": 0}, r"hnsw_m must be > 0, got 0"),
    (ServeConfig, ServeJobConfig, "serve", {"port": 0}, r"port must be in \[1, 65535\], got 0"),
    (IndexConfig, IndexJobConfig, "index", {"shards": 0}, r"shards must be in \[1, 1024\], got 0"),
    (ServeConfig, ServeJobConfig, "serve", {"shard_replicas": 0}, r"shard_replicas must be > 0, got 0"),
    (ServeConfig, ServeJobConfig, "serve", {"shard_timeout_s": 0.0}, r"shard_timeout_s must be in \(0, 600\], got 0"),
    (TuneSpace, TuneJobConfig, "space", {"schedules": ()},
     r"schedules must list at least one of \['log', 'uniform'\]"),
]


@pytest.mark.parametrize("cls, job_cls, key, kwargs, match", SECTION_RANGES)
def test_section_ranges(cls, job_cls, key, kwargs, match):
    with pytest.raises(ConfigError, match="^" + match):
        cls(**kwargs)


@pytest.mark.parametrize("cls, job_cls, key, kwargs, match", SECTION_RANGES)
def test_section_ranges_in_a_job_config_name_the_full_path(tmp_path, cls, job_cls, key, kwargs, match):
    data = {key: kwargs}
    if job_cls in (TrainJobConfig, EmbedJobConfig):
        data["data"] = {"path": str(tmp_path)}
    if job_cls is TuneJobConfig:
        data["base"] = {"data": {"path": str(tmp_path)}}
    with pytest.raises(ConfigError, match=rf"^{key}\." + match):
        from_dict(job_cls, data)


def test_serve_default_k_above_shortlist_k_rejected():
    with pytest.raises(ConfigError, match=r"^default_k \(300\) must be <= search\.shortlist_k \(200\)$"):
        ServeConfig(default_k=300, search=SearchSettings(shortlist_k=200))
    assert ServeConfig(default_k=200, max_k=200, search=SearchSettings(shortlist_k=200)).default_k == 200
    with pytest.raises(ConfigError, match=r"^serve\.default_k \(300\) must be <= search\.shortlist_k \(200\)$"):
        load_config(ServeJobConfig, overrides=["serve.default_k=300", "serve.search.shortlist_k=200"])


def test_configs_are_frozen():
    cfg = TrainConfig()
    with pytest.raises(AttributeError):
        cfg.epochs = 5


# ---------------------------------------------------------------- PipelineConfig

def test_pipeline_shortlist_size_must_be_indexed(tmp_path):
    data = DataConfig(path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"serve\.mode 'adaptive' cannot run on this index: .*"
                                          r"index\.sizes must include 12\. Modes it can serve: \['full'\]"):
        PipelineConfig(data=data, serve=ServeConfig(search=SearchSettings(shortlist_size=12)))
    with pytest.raises(ConfigError, match=r"index\.sizes must include 16"):
        PipelineConfig(data=data, index=IndexConfig(sizes=(8, 32)), serve=ServeConfig(search=SearchSettings(shortlist_size=16)))
    ok = PipelineConfig(data=data, index=IndexConfig(sizes=(8, 32)), serve=ServeConfig(search=SearchSettings(shortlist_size=32)))
    assert ok.serve.search.shortlist_size == 32


def test_pipeline_rerank_and_index_sizes_bounded_by_dim(tmp_path):
    data = DataConfig(path=str(tmp_path))
    model = ModelConfig(dim=64)
    with pytest.raises(ConfigError, match=r"serve\.search\.rerank_size 128 is above d=64"):
        PipelineConfig(data=data, model=model, serve=ServeConfig(search=SearchSettings(rerank_size=128)))
    with pytest.raises(ConfigError, match=r"index\.sizes \[16, 128\] go above d=64"):
        PipelineConfig(data=data, model=model, index=IndexConfig(sizes=(16, 128)))


@pytest.mark.parametrize("index, serve, message", [
    (IndexConfig(adanns_size=128), ServeConfig(), r"index\.adanns_size 128 is outside \[1, d=64\]"),
    (IndexConfig(), ServeConfig(search=SearchSettings(funnel=((32, 100), (128, 10)))), r"serve\.search\.funnel sizes \[128\] are above d=64"),
    (IndexConfig(), ServeConfig(mode="adanns"), r"serve\.mode 'adanns' cannot run .*set index\.adanns_size"),
    (IndexConfig(sizes=(8, 16, 32)), ServeConfig(mode="full"), r"serve\.mode 'full' cannot run .*must include 64"),
    (IndexConfig(kind="ivfpq", pq_m=16), ServeConfig(), r"pq_m=16 does not divide 8"),
    (IndexConfig(codes=((32, "int8"),)), ServeConfig(mode="funnel", search=SearchSettings(
        funnel=((64, 100, "binary"), (None, 10)))), r"reranks with codes \['binary@64'\], which this index lacks"),
    (IndexConfig(codes=((128, "binary"),)), ServeConfig(), r"index\.codes: binary code size 128 is outside"),
])
def test_pipeline_serving_choices_checked_before_any_work(tmp_path, index, serve, message):
    """The same rules the index stage and the service apply to real artifacts, applied to the index to be built."""
    with pytest.raises(ConfigError, match=r"multiple of 8, got 12"):
        IndexConfig(kind="binary_hnsw", sizes=(12, 64))
    with pytest.raises(ConfigError, match=message):
        PipelineConfig(data=DataConfig(path=str(tmp_path)), model=ModelConfig(dim=64), index=index, serve=serve)
    ok = PipelineConfig(data=DataConfig(path=str(tmp_path)), model=ModelConfig(dim=64),
                        index=IndexConfig(adanns_size=16), serve=ServeConfig(mode="adanns"))
    assert ok.serve.mode == "adanns"


def test_pipeline_train_job(tmp_path):
    p = PipelineConfig(data=DataConfig(path=str(tmp_path)), run_name="r1", train=TrainConfig(epochs=1))
    job = p.train_job()
    assert isinstance(job, TrainJobConfig)
    assert job.run_name == "r1" and job.train.epochs == 1 and job.data.path == str(tmp_path)


def test_tune_job_checks_every_schedule_combination(tmp_path):
    base = {"data": {"path": str(tmp_path)}, "model": {"dim": 16}}
    with pytest.raises(ConfigError, match=r"^space \(schedule 'uniform', min_size 16, count 8\) with base\.model: "
                                          r"nesting: count=8 is more than the 1 sizes in \[16, 16\]"):
        from_dict(TuneJobConfig, {"base": base, "space": {"min_sizes": [16]}})
    cfg = from_dict(TuneJobConfig, {"base": base, "space": {"schedules": ["log"], "min_sizes": [4, 8]}})
    assert cfg.space.min_sizes == (4, 8)
    with pytest.raises(ConfigError, match=r"^space.deploy_sizes \[32\] go above base.model.dim 16"):
        from_dict(TuneJobConfig, {"base": base, "space": {"schedules": ["log"], "deploy_sizes": [32]}})
    with pytest.raises(ConfigError, match=r"^search.grace_period 3 is more than base.train.epochs 2"):
        from_dict(TuneJobConfig, {"base": {**base, "train": {"epochs": 2}}, "space": {"schedules": ["log"]},
                                  "search": {"scheduler": "asha", "grace_period": 3}})
    with pytest.raises(ConfigError, match=r"^search\.algorithm: 'bayes' is not accepted; choose one of "
                                          r"\['grid', 'random', 'optuna'\]"):
        from_dict(TuneJobConfig, {"base": base, "search": {"algorithm": "bayes"}})


@pytest.mark.parametrize("funnel, message", [
    (((None, 50), (64, 10)), "null \\(= d\\) only last"),
    (((64, 10), (64, 10)), "sizes must be > 0 and increase"),
    (((8, 10),), "grow from above the shortlist's size 16"),
    (((32, 300),), "first rerank keeps 300, more than the shortlist's 200"),
    (((32, 10), (64, 20)), "must not grow from stage to stage"),
    ((), "at least one"),
])
def test_serve_funnel_stages_are_validated(funnel, message):
    from mrl.config import ServeConfig

    with pytest.raises(ConfigError, match=message):
        ServeConfig(search=SearchSettings(funnel=funnel))


def test_embed_augmentation_fields_are_validated():
    from mrl.config import EmbedConfig

    assert EmbedConfig(augment_rows=100, dtype="float16").augment_rows == 100
    with pytest.raises(ConfigError, match="augment_rows must be > 0"):
        EmbedConfig(augment_rows=0)
    with pytest.raises(ConfigError, match="augment_seed must be >= 0"):
        EmbedConfig(augment_seed=-1)


def test_registry_names_are_the_accepted_values():
    """Encoders, heads, losses, index kinds and search modes are checked against their registries when a config
    is built, so an entry registered later (by any module) is accepted too."""
    with pytest.raises(ConfigError, match=r"^encoder 'mlp' is not accepted; choose one of \['cnn', 'resnet18'"):
        from_dict(ModelConfig, {"encoder": "mlp"})
    with pytest.raises(ConfigError, match=r"^model\.head 'wide' is not accepted; choose one of \['mrl', 'mrl_e', 'none'\]"):
        load_config(TrainJobConfig, overrides=["model.head=wide"])
    with pytest.raises(ConfigError, match=r"^loss 'hinge' is not accepted; choose one of \['cross_entropy'"):
        from_dict(TrainConfig, {"loss": "hinge"})
    with pytest.raises(ConfigError, match=r"^kind 'annoy' is not accepted; choose one of \['flat', 'hnsw', 'ivf'"):
        from_dict(IndexConfig, {"kind": "annoy"})
    with pytest.raises(ConfigError, match=r"^mode 'fastest' is not accepted; choose one of \['adaptive', 'funnel'"):
        ServeConfig(mode="fastest")


def test_an_encoder_registered_after_import_is_accepted():
    from mrl.core.models.encoders import ENCODERS, CompactCNN

    @ENCODERS.register("toy")
    def toy(*, in_channels, image_size, width, pretrained_path, backbone):
        return CompactCNN(in_channels, image_size, (4, 8), width)

    try:
        assert from_dict(ModelConfig, {"encoder": "toy", "dim": 16}).encoder == "toy"
    finally:
        ENCODERS.unregister("toy")


@pytest.mark.parametrize("kwargs, message", [
    ({"max_ongoing_requests": 8, "batch_max_size": 16}, r"max_ongoing_requests \(8\) must be >= batch_max_size \(16\)"),
    ({"api_key_env": "A", "api_key_file": "/k"}, "at most one of api_key_env and api_key_file"),
    ({"autoscaling": {"min_replicas": 1, "max_replicas": 4, "target": 2}}, r"autoscaling keys \['target'\]"),
    ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas <= max_replicas"),
    ({"default_k": 50, "max_k": 20, "search": SearchSettings(shortlist_k=200)}, r"default_k \(50\) must be <= max_k \(20\)"),
    ({"search": SearchSettings(shortlist_k=5000)}, r"search\.shortlist_k \(5000\) must be <= max_shortlist_k \(2000\)"),
    ({"batch_wait_ms": -1.0}, r"batch_wait_ms must be in \[0, 1000\]"),
])
def test_serve_limits_auth_scaling_and_batching_are_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ServeConfig(**kwargs)
    ok = ServeConfig(autoscaling={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16})
    assert ok.autoscaling["max_replicas"] == 4
