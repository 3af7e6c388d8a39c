"""Every config class in one namespace, for jobs, notebooks and tests: `from mrl.config import TrainJobConfig`.

The classes live with the packages that use them (`mrl.core.config`, `mrl.data.config`, `mrl.retrieval.config`,
`mrl.service.config`, `mrl.artifacts.config`) and the job configs that compose them in `mrl.stages.config`. This
module sits above them all; only `mrl.cli` imports it.
"""

from mrl.artifacts.config import MlflowConfig
from mrl.configio import ConfigError, check, positive, registered
from mrl.core.config import ModelConfig, NestingConfig, TextConfig
from mrl.data.config import DataConfig
from mrl.data.sources import FASHION_MNIST_DIR
from mrl.retrieval.config import IndexConfig, SizeIndexParams
from mrl.service.config import ServeConfig
from mrl.stages.config import (
    EmbedConfig,
    EmbedJobConfig,
    EvalConfig,
    EvaluateJobConfig,
    IndexJobConfig,
    JobConfig,
    LineageJobConfig,
    PipelineConfig,
    PromoteJobConfig,
    RayConfig,
    ResourcesConfig,
    SearchJobConfig,
    ServeJobConfig,
    TrainConfig,
    TrainJobConfig,
    TuneJobConfig,
    TuneSearch,
    TuneSpace,
    check_modalities,
    check_paths,
)

__all__ = [
    "ConfigError", "check", "positive", "registered",
    "NestingConfig", "TextConfig", "ModelConfig", "FASHION_MNIST_DIR", "DataConfig", "IndexConfig",
    "SizeIndexParams", "ServeConfig", "MlflowConfig",
    "TrainConfig", "ResourcesConfig", "RayConfig", "EmbedConfig", "EvalConfig", "JobConfig", "TrainJobConfig",
    "EmbedJobConfig", "IndexJobConfig", "EvaluateJobConfig", "ServeJobConfig", "SearchJobConfig", "LineageJobConfig",
    "PromoteJobConfig", "TuneSpace", "TuneSearch", "TuneJobConfig", "PipelineConfig", "check_modalities",
    "check_paths",
]
