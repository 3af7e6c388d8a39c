"""The entry points stop on a bad config before any Ray work, naming the field and accepted values."""

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("script, args, message", [
    ("jobs/train.py", ["model.encoder=alexnet"], "model.encoder 'alexnet' is not accepted; choose one of"),
    ("jobs/train.py", ["model.nesting.schedule=list", "model.nesting.sizes=[16,8]"], "is not sorted"),
    ("jobs/train.py", ["model.nesting.schedule=list", "model.nesting.sizes=[8,1024]"],
     "outside the accepted range [1, dim=512]"),
    ("jobs/train.py", ["data.path=/nonexistent/fmnist"], "data.path '/nonexistent/fmnist' does not exist"),
    ("jobs/pipeline.py", ["serve.search.shortlist_size=12"], "serve.mode 'adaptive' cannot run on this index"),
    ("jobs/embed.py", ["embed.num_actors=0"], "embed.num_actors must be > 0"),
    ("tuning/tune.py", ["search.algorithm=bayes"], "search.algorithm: 'bayes' is not accepted"),
    ("serving/app.py", ["serve.port=70000"], "serve.port must be in [1, 65535]"),
    ("jobs/train.py", ["train.epochs"], "is not of the form key=value"),
    ("jobs/train.py", ["trian.epochs=2"], "unknown config key(s) ['trian']"),
    ("jobs/pipeline.py", ["log_level=loud"], "log_level: 'loud' is not accepted; choose one of ['info', 'debug']"),
])
def test_bad_config_exits_2_before_ray(script, args, message, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_search_queries_an_index_through_the_service_code(tmp_path):
    """`mrl search` builds the mode's plan and runs the engine, with no Ray: the item itself comes first."""
    import json

    import numpy as np

    from mrl.artifacts.index import write_index
    from mrl.cli import main

    vectors = np.random.default_rng(0).normal(size=(200, 32)).astype(np.float32)
    write_index(tmp_path, np.arange(200) + 1000, np.zeros(200, dtype=np.int64), vectors, [8, 32], "flat", {})
    out = subprocess.run([sys.executable, "-m", "mrl.cli", "search", f"index_dir={tmp_path}", "ids=[1007,1010]",
                          "mode=funnel", "k=3", "serve.search.shortlist_size=8"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["ids"][0] for r in replies] == [1007, 1010] and all(len(r["ids"]) == 3 for r in replies)
    assert replies[0]["search"]["mode"] == "funnel" and replies[0]["search"]["reranks"] == [[16, 100], [32, 3]]
    assert main(["search", f"index_dir={tmp_path}", "ids=[5]", "serve.search.shortlist_size=8"]) == 2  # not in the corpus
    assert main(["search", f"index_dir={tmp_path / 'nope'}"]) == 2  # no index there
    assert main(["search", f"index_dir={tmp_path}", "serve.search.shortlist_size=16"]) == 2  # no index at 16


def test_verbose_is_log_level_debug_for_the_commands_that_have_one(tmp_path):
    """`--verbose` (anywhere on the line) is log_level=debug; without it a stage is quiet (info); a command whose
    config has no log_level (search) takes the flag and ignores it; a config built directly refuses a bad level."""
    from mrl.cli import job_config, parse
    from mrl.config import TrainJobConfig
    from mrl.configio import ConfigError

    assert job_config(parse(["train", f"output_dir={tmp_path}"])).log_level == "info"
    assert job_config(parse(["train", "--verbose", f"output_dir={tmp_path}"])).log_level == "debug"
    assert job_config(parse(["pipeline", "--config", str(REPO / "jobs/pipeline.yaml"), "train.epochs=1",
                             "-v"])).log_level == "debug"
    assert job_config(parse(["embed", "log_level=debug"])).log_level == "debug"
    assert not hasattr(job_config(parse(["search", "-v", f"index_dir={tmp_path}"])), "log_level")
    with pytest.raises(ConfigError, match=r"log_level 'loud' is not accepted; choose one of \['info', 'debug'\]"):
        TrainJobConfig(log_level="loud")
