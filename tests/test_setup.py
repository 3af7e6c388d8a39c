"""scripts/python.sh, the interpreter choice that setup.sh installs into and test.sh / quickstart.sh run with.

On Debian 12 and Ubuntu 24.04 the system `python3` refuses `pip install` (PEP 668), so without PYTHON= and without
an activated venv or conda env the choice is the project venv, never the `python3` on PATH. The stand-in for that
system interpreter is a copy of this interpreter's base executable with a standard library directory of its own
(links to the real entries) holding an EXTERNALLY-MANAGED marker: a non-venv interpreter that pip refuses to
install into. A venv cannot play the part: its standard library is its base's, and pip never treats a venv as
externally managed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "python.sh"


@pytest.fixture(scope="module")
def system_python(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("system")
    stdlib = Path(sysconfig.get_path("stdlib"))  # the base interpreter's, also when this one is a venv
    own_stdlib = root / "lib" / stdlib.name
    own_stdlib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "EXTERNALLY-MANAGED":
            (own_stdlib / entry.name).symlink_to(entry)
    (own_stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=the test's stand-in system python\n")
    for lib in Path(sysconfig.get_config_var("LIBDIR") or "/nonexistent").glob("libpython*"):
        (root / "lib" / lib.name).symlink_to(lib)  # for a shared build whose RUNPATH is $ORIGIN/../lib
    (root / "bin").mkdir()
    # a copy, not a link: Python finds its prefix from where its executable really is
    shutil.copy2(os.path.realpath(sys._base_executable), root / "bin" / "python3")
    return root / "bin" / "python3"


def run_bash(script: str, path_first: Path | None = None, **env: str) -> str:
    """Runs `script` after sourcing scripts/python.sh, in an environment holding only PATH, HOME and `env` (so an
    activated venv around this test run does not leak in); returns its stdout's lines."""
    path = f"{path_first}:/usr/bin:/bin" if path_first else "/usr/bin:/bin"
    full_env = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), **env}
    return subprocess.run(["bash", "-c", f'. "{SCRIPT}" && {script}'], env=full_env, capture_output=True,
                          text=True, check=True, timeout=60).stdout.splitlines()


def test_stand_in_is_an_externally_managed_system_python(system_python):
    out = subprocess.run([str(system_python), "-c", "import os, sys, sysconfig; print(sys.prefix == sys.base_prefix,"
                          " os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"],
                         capture_output=True, text=True, check=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["True", "True"]  # not a venv, and carries the marker
    has_pip = subprocess.run([str(system_python), "-c", "import pip"], capture_output=True, timeout=60).returncode == 0
    if has_pip:
        refused = subprocess.run([str(system_python), "-m", "pip", "install", "--dry-run", "--no-index", "pip"],
                                 capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
        assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused.stderr


def test_no_python_no_venv_picks_the_project_venv(system_python, tmp_path):
    venv = tmp_path / "project-venv"
    found, chosen = run_bash("command -v python3 && choose_python", system_python.parent, MRL_VENV=str(venv))
    assert found == str(system_python)  # that python3 is the first on PATH ...
    assert chosen == f"{venv}/bin/python"  # ... and is passed over
    assert not venv.exists()  # the choice creates nothing
    # the default project venv is .venv in the checkout; run rather than sourced, the script prints the same
    assert run_bash("choose_python", system_python.parent) == [f"{REPO}/.venv/bin/python"]
    out = subprocess.run(["bash", str(SCRIPT)], env={"PATH": f"{system_python.parent}:/usr/bin:/bin"},
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.splitlines() == [f"{REPO}/.venv/bin/python"]


def test_explicit_python_wins(system_python, tmp_path):
    assert run_bash("choose_python", system_python.parent, PYTHON=str(system_python),
                    MRL_VENV=str(tmp_path / "v")) == [str(system_python)]
    assert run_bash("choose_python", PYTHON="python3.11", VIRTUAL_ENV=str(tmp_path / "active"),
                    CONDA_PREFIX=str(tmp_path / "conda")) == ["python3.11"]


def test_an_activated_venv_or_conda_env_wins(system_python, tmp_path):
    active = tmp_path / "active"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(active)], check=True, timeout=120)
    # what `. <venv>/bin/activate` sets is what counts
    assert run_bash(f'. "{active}/bin/activate" && choose_python', system_python.parent,
                    MRL_VENV=str(tmp_path / "v")) == [f"{active}/bin/python"]
    conda = tmp_path / "conda"
    assert run_bash("choose_python", system_python.parent, CONDA_PREFIX=str(conda)) == [f"{conda}/bin/python"]
    # a venv activated inside a conda env is the innermost activation
    assert run_bash(f'. "{active}/bin/activate" && choose_python', system_python.parent,
                    CONDA_PREFIX=str(conda)) == [f"{active}/bin/python"]
