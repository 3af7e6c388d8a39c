"""The entry points stop on a bad config before any Ray work, naming the field and accepted values."""

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("script, args, message", [
    ("jobs/train.py", ["model.encoder=alexnet"], "model.encoder: 'alexnet' is not accepted; choose one of"),
    ("jobs/train.py", ["model.nesting.schedule=list", "model.nesting.sizes=[16,8]"], "is not sorted"),
    ("jobs/train.py", ["model.nesting.schedule=list", "model.nesting.sizes=[8,1024]"],
     "outside the accepted range [1, dim=512]"),
    ("jobs/train.py", ["data.path=/nonexistent/fmnist"], "data.path '/nonexistent/fmnist' does not exist"),
    ("jobs/pipeline.py", ["serve.shortlist_size=12"], "serve.mode 'adaptive' cannot run on this index"),
    ("jobs/embed.py", ["embed.num_actors=0"], "embed.num_actors must be > 0"),
    ("tuning/tune.py", ["metric=accuracy"], "metric 'accuracy' is not accepted"),
    ("serving/app.py", ["serve.port=70000"], "serve.port must be in [1, 65535]"),
    ("jobs/train.py", ["train.epochs"], "is not of the form key=value"),
    ("jobs/train.py", ["trian.epochs=2"], "unknown config key(s) ['trian']"),
])
def test_bad_config_exits_2_before_ray(script, args, message, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
