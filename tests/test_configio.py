"""Loading typed configs: overrides, unknown keys, wrong types, Literals (mrl.configio)."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mrl.config import ModelConfig, ResourcesConfig, TrainConfig, TrainJobConfig
from mrl.configio import ConfigError, deep_merge, flatten, from_dict, load_config, parse_overrides, to_dict

# ---------------------------------------------------------------- parse_overrides

def test_parse_overrides_nested_and_yaml_values():
    out = parse_overrides([
        "train.epochs=2",
        "train.lr=0.001",
        "model.nesting.sizes=[8, 16, 32]",
        "model.nesting.weights=[1, 0.5, 2]",
        "model.pretrained_path=null",
        "resources.use_gpu=false",
        "run_name=my-run",
        "mlflow.experiment=",
        "ray.address='auto'",
    ])
    assert out == {
        "train": {"epochs": 2, "lr": 0.001},
        "model": {"nesting": {"sizes": [8, 16, 32], "weights": [1, 0.5, 2]}, "pretrained_path": None},
        "resources": {"use_gpu": False},
        "run_name": "my-run",
        "mlflow": {"experiment": ""},
        "ray": {"address": "auto"},
    }
    assert isinstance(out["train"]["epochs"], int)
    assert isinstance(out["train"]["lr"], float)


def test_scientific_notation_override_is_a_number(tmp_path):
    # PyYAML's YAML 1.1 resolver reads '1e-3' (no dot) as a string; float fields accept it as a number.
    cfg = load_config(TrainConfig, overrides=["lr=1e-3", "weight_decay=5e-4"])
    assert cfg.lr == pytest.approx(1e-3) and cfg.weight_decay == pytest.approx(5e-4)
    assert isinstance(cfg.lr, float) and isinstance(cfg.weight_decay, float)
    job = load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}", "train.lr=1e-3"])
    assert job.train.lr == pytest.approx(1e-3) and isinstance(job.train.lr, float)
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a finite number, got '1e-3x'$"):
        load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}", "train.lr=1e-3x"])


def test_parse_overrides_value_may_contain_equals():
    assert parse_overrides(["mlflow.tracking_uri=http://h:5000/?a=b"]) == {
        "mlflow": {"tracking_uri": "http://h:5000/?a=b"}}


def test_parse_overrides_later_wins():
    assert parse_overrides(["a.b=1", "a.b=2", "a.c=3"]) == {"a": {"b": 2, "c": 3}}


@pytest.mark.parametrize("item", ["train.epochs", "=3", "", "noequals"])
def test_parse_overrides_malformed(item):
    with pytest.raises(ConfigError, match=r"is not of the form key=value"):
        parse_overrides([item])


def test_parse_overrides_conflict():
    with pytest.raises(ConfigError, match=r"conflicts with another override of 'train'"):
        parse_overrides(["train=3", "train.epochs=2"])


def test_deep_merge_recurses_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    out = deep_merge(base, {"a": {"c": 20, "e": 5}, "f": 6})
    assert out == {"a": {"b": 1, "c": 20, "e": 5}, "d": 3, "f": 6}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3}


# ---------------------------------------------------------------- from_dict: keys and types

def test_unknown_key_lists_accepted_keys():
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, {"epoch": 3}, prefix="train.")
    msg = str(info.value)
    assert "train.epoch" in msg
    for key in ("batch_size", "epochs", "lr", "optimizer", "schedule", "seed", "weight_decay"):
        assert key in msg


def test_unknown_nested_key_names_its_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['model\.nesting\.size'\]"):
        load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}", "model.nesting.size=[8]"])


@pytest.mark.parametrize("data, match", [
    ({"epochs": "three"}, r"train\.epochs: expected an integer, got 'three'"),
    ({"epochs": 2.5}, r"train\.epochs: expected an integer, got 2\.5"),
    ({"epochs": True}, r"train\.epochs: expected an integer, got True"),
    ({"lr": "fast"}, r"train\.lr: expected a finite number, got 'fast'"),
    ({"lr": False}, r"train\.lr: expected a finite number"),
])
def test_wrong_types(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(TrainConfig, data, prefix="train.")


def test_lossless_conversions():
    cfg = from_dict(TrainConfig, {"lr": 1, "epochs": 4})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    model = from_dict(ModelConfig, {"dim": 64, "nesting": {"schedule": "list", "sizes": [8, 64], "weights": [1, 2]}})
    assert model.nesting.sizes == (8, 64)
    assert model.nesting.weights == (1.0, 2.0) and all(isinstance(w, float) for w in model.nesting.weights)


@pytest.mark.parametrize("data, match", [
    ({"dim": 64, "nesting": {"schedule": "list", "sizes": 8}}, r"^model\.nesting\.sizes: expected a list, got 8$"),
    ({"dim": 64, "nesting": {"schedule": "list", "sizes": [8, "x"]}},
     r"^model\.nesting\.sizes\[1\]: expected an integer, got 'x'$"),
    ({"nesting": 3}, r"^model\.nesting: expected a mapping of NestingConfig fields, got 3$"),
    ({"backbone": [1]}, r"^model\.backbone: expected a mapping, got \[1\]$"),
    ({"pretrained_path": 5}, r"^model\.pretrained_path: expected a string, got 5$"),
])
def test_wrong_nested_types(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(ModelConfig, data, prefix="model.")


def test_literal_rejection_names_accepted_values():
    with pytest.raises(ConfigError) as info:
        from_dict(ModelConfig, {"encoder": "lstm"}, prefix="model.")
    msg = str(info.value)
    assert "model.encoder" in msg and "'lstm'" in msg
    for name in ("cnn", "resnet18", "resnet50", "vit", "bert"):
        assert f"'{name}'" in msg
    with pytest.raises(ConfigError, match=r"train\.optimizer: 'adam' is not accepted; choose one of "
                                          r"\['adamw', 'sgd'\]"):
        from_dict(TrainConfig, {"optimizer": "adam"}, prefix="train.")


def test_union_with_literal_accepts_both_forms():
    assert from_dict(ResourcesConfig, {"use_gpu": "auto"}).use_gpu == "auto"
    assert from_dict(ResourcesConfig, {"use_gpu": True}).use_gpu is True
    with pytest.raises(ConfigError, match=r"resources\.use_gpu: 'maybe'"):
        from_dict(ResourcesConfig, {"use_gpu": "maybe"}, prefix="resources.")


def test_union_with_literal_rejection_names_accepted_values(tmp_path):
    with pytest.raises(ConfigError, match=r"^resources\.use_gpu: 'maybe' is not accepted; "
                                          r"expected true/false or one of \['auto'\]$"):
        from_dict(ResourcesConfig, {"use_gpu": "maybe"}, prefix="resources.")
    with pytest.raises(ConfigError, match=r"^resources\.use_gpu: 'maybe' is not accepted; "
                                          r"expected true/false or one of \['auto'\]$"):
        load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}", "resources.use_gpu=maybe"])


def test_optional_list_rejection_names_the_bad_element(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.nesting\.sizes\[1\]: expected an integer, got 'x'$"):
        from_dict(ModelConfig, {"dim": 64, "nesting": {"schedule": "list", "sizes": [8, "x"]}}, prefix="model.")
    with pytest.raises(ConfigError, match=r"^model\.nesting\.sizes\[1\]: expected an integer, got 'x'$"):
        load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}", "model.nesting.schedule=list",
                                               "model.nesting.sizes=[8, x]"])


def test_from_dict_prefixes_post_init_errors():
    @dataclass(frozen=True)
    class Inner:
        n: int = 1

        def __post_init__(self):
            if self.n < 0:
                raise ConfigError(f"n must be >= 0, got {self.n}")

    @dataclass(frozen=True)
    class Outer:
        inner: Inner = field(default_factory=Inner)
        mode: Literal["a", "b"] = "a"

    with pytest.raises(ConfigError, match=r"^inner\.n must be >= 0, got -1$"):
        from_dict(Outer, {"inner": {"n": -1}})
    assert from_dict(Outer, {"mode": "b", "inner": {"n": 2}}) == Outer(inner=Inner(n=2), mode="b")


# ---------------------------------------------------------------- load_config, to_dict, flatten

def test_load_config_file_then_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(f"data:\n  path: {tmp_path}\ntrain:\n  epochs: 5\n  lr: 0.01\nmodel:\n  dim: 64\n")
    cfg = load_config(TrainJobConfig, path, ["train.epochs=1", "model.nesting.min_size=16"])
    assert cfg.train.epochs == 1 and cfg.train.lr == 0.01
    assert cfg.model.dim == 64 and cfg.model.sizes == [16, 32, 64]
    assert cfg.data.path == str(tmp_path)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml' does not exist"):
        load_config(TrainConfig, tmp_path / "nope.yaml")


def test_load_config_non_mapping_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping at the top level"):
        load_config(TrainConfig, path)


def test_load_config_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(TrainConfig, path) == TrainConfig()


def test_to_dict_round_trip(tmp_path):
    cfg = load_config(TrainJobConfig, overrides=[f"data.path={tmp_path}", "model.nesting.schedule=list",
                                                 "model.nesting.sizes=[8, 512]"])
    plain = to_dict(cfg)
    assert plain["model"]["nesting"]["sizes"] == [8, 512]
    assert isinstance(plain["model"]["nesting"]["sizes"], list)
    assert from_dict(TrainJobConfig, plain) == cfg


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


@pytest.mark.parametrize("raw", ["inf", "-inf", ".inf", "nan", "infinity"])
def test_non_finite_floats_are_rejected(raw):
    with pytest.raises(ConfigError, match=r"^train\.weight_decay: expected a finite number"):
        load_config(TrainJobConfig, overrides=[f"train.weight_decay={raw}"])


def test_fixed_length_tuples_are_checked_item_by_item():
    from mrl.config import ServeJobConfig

    cfg = from_dict(ServeJobConfig, {"serve": {"search": {"funnel": [[64, 100], [None, 10]]}}})
    assert cfg.serve.search.funnel == ((64, 100), (None, 10))
    with pytest.raises(ConfigError, match=r"serve.search.funnel\[0\]: expected 2 items \(.*\) or 3 items"):
        from_dict(ServeJobConfig, {"serve": {"search": {"funnel": [[64]]}}})
    with pytest.raises(ConfigError, match=r"serve.search.funnel\[0\]\[1\]: expected an integer, got None"):
        from_dict(ServeJobConfig, {"serve": {"search": {"funnel": [[64, None]]}}})


def test_funnel_stages_take_an_optional_codes_item_checked_like_the_rest():
    from mrl.config import ServeJobConfig

    cfg = from_dict(ServeJobConfig, {"serve": {"search": {"funnel": [[1024, 100, "binary"], [512, 40, "int8"],
                                                                      [None, 10]]}}})
    assert cfg.serve.search.funnel == ((1024, 100, "binary"), (512, 40, "int8"), (None, 10))
    with pytest.raises(ConfigError, match=r"funnel\[0\]\[2\]: 'int4' is not accepted; choose one of"):
        from_dict(ServeJobConfig, {"serve": {"search": {"funnel": [[64, 100, "int4"], [None, 10]]}}})
    with pytest.raises(ConfigError, match=r"funnel\[0\]: expected 2 items .* or 3 items .*got \[64, 100, 'int8', 1\]"):
        from_dict(ServeJobConfig, {"serve": {"search": {"funnel": [[64, 100, "int8", 1]]}}})
