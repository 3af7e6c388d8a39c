"""The wheel holds the `mrl` library and the benchmark package `mrlbench` beside it (never jobs/, serving/,
tuning/, tests/, the benchmark scripts or a `platform` package) and declares the `mrl` console script."""

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_only_mrl_and_mrlbench(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("mrl_platform-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"mrl", "mrlbench", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, top
    for module in ("core/losses.py", "core/models/heads.py", "retrieval/engine.py", "service/retrieval.py",
                   "stages/serve.py", "artifacts/mlflow_model.py"):
        assert f"mrl/{module}" in names, module
    assert "mrlbench/reproduce.py" in names and not any(n.startswith("mrl/experiments/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mrl = mrl.cli:main" in entry_points


def test_platform_is_a_source_root_not_a_package():
    import platform

    assert not (REPO / "platform" / "__init__.py").exists()
    assert hasattr(platform, "python_version")  # the standard library's module, not our folder
