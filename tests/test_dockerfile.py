"""Offline checks of the Dockerfile the KubeRay manifests' image is built from, and of its .dockerignore.

Docker is not available here, so nothing is built: the Dockerfile is parsed (continuation lines, ARG defaults
in FROM) and checked against the project: the base image's Ray is the Ray pyproject.toml pins, the one installed
here and the rayVersion of k8s/; the image runs as the base image's unprivileged user; the project is installed
from the copied tree (not editable) with CUDA torch and faiss-gpu. The .dockerignore rules are evaluated the way
Docker evaluates them (patterns anchored at the context root, `*` within a path segment, `**` across segments, a
directory's rule covering what is under it, `!` re-including, the last matching rule winning), against paths that
must stay out (outputs, data, .git, .venv, keys, tokens) and every tracked file the install needs. Broken copies
must be refused, so that each check can fail.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MUST_STAY_OUT = [
    ".git/HEAD", ".venv/bin/python", "outputs/mlflow.db", "outputs/index/latest/manifest.json", "outputs/embeddings/latest/train/part-0.parquet",
    "mlruns/0/meta.yaml", "mlartifacts/1/model/weights/model.safetensors", "mlflow.db", "data/fashion/train.parquet",
    "build/lib/mrl/__init__.py", "platform/mrl_platform.egg-info/PKG-INFO", "mrl_platform.egg-info/PKG-INFO",
    "platform/mrl/__pycache__/cli.cpython-311.pyc", "docs/results/quickstart_accuracy_vs_size.png",
    "tests/fixtures/model_v1/model.safetensors", "server.pem", "deploy/tls/server.key", ".env", "jobs/.env.local",
    ".ray/auth_token", "k8s/auth_token", "ray_auth_token.txt", ".ssh/id_ed25519", "id_rsa", ".pgpass",
    ".aws/credentials", "kubeconfig.yaml", "k8s/mrl-ray-auth.secret.yaml", "outputs/index/latest/size_8.faiss",
]


# --- reading the Dockerfile -------------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, backslash continuations joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def base_image(steps: list[tuple[str, str]]) -> str:
    """The FROM image with the ARG defaults declared before it substituted."""
    args = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
        if word == "FROM":
            return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
    raise AssertionError("no FROM")


def pyproject(pattern: str) -> str:
    """A quoted value of pyproject.toml (read with a pattern: tomllib is not in Python 3.10)."""
    match = re.search(pattern, (REPO / "pyproject.toml").read_text(), re.M)
    assert match, pattern
    return match.group(1)


def ray_pin() -> Requirement:
    return Requirement(pyproject(r'^\s*"(ray\[[^"]*)"'))


def image_tag() -> str:
    """The tag of the build command the Dockerfile's header gives (`docker build -t <tag> .`)."""
    match = re.search(r"docker build -t (\S+) \.", DOCKERFILE.read_text())
    assert match, "the Dockerfile's header gives its build command"
    return match.group(1)


def check_base(steps: list[tuple[str, str]]) -> None:
    import ray

    image = base_image(steps)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(gpu|cu12\d)", image)
    assert match, f"{image}: not a rayproject/ray GPU image of one Ray release and one Python"
    version, minor = match.group(1), int(match.group(2))
    assert ray_pin().specifier.contains(version), f"{image} does not satisfy the pin {ray_pin()}"
    assert version == ray.__version__, f"{image} is not the Ray installed here ({ray.__version__})"
    requires = SpecifierSet(pyproject(r'^requires-python = "([^"]+)"'))
    assert Version(f"3.{minor}") in requires, f"{image}: Python 3.{minor} is outside requires-python {requires}"


def check_install(steps: list[tuple[str, str]]) -> None:
    """Unprivileged user; the tree copied, then installed (not editable) with CUDA torch and faiss-gpu."""
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] == "ray", f"the image must run as the base image's user: {users}"
    copies = [i for i, (word, rest) in enumerate(steps) if word == "COPY" and shlex.split(rest)[-2:-1] == ["."]]
    runs = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "RUN"]
    commands = [(i, c.strip()) for i, rest in runs for c in rest.split("&&")]
    assert not any(re.search(r"pip install .*(-e|--editable)\b", c) for _, c in commands), "an editable install"
    install = [i for i, c in commands if re.match(r"pip install (--no-cache-dir )?\"?\.(\[[\w,]+\])?\"?( |$)", c)]
    assert copies and install and copies[0] < install[0], "the copied project must be pip-installed"
    torch = [i for i, c in commands if re.search(r"pip install .*\"?torch==", c)]
    assert torch and torch[0] < install[0], "CUDA torch goes in before the project"
    order = [next(n for n, (_, c) in enumerate(commands) if re.search(p, c)) for p in
             (r"pip install (--no-cache-dir )?\"?\.\[[\w,]*gpu", r"pip uninstall -y faiss-cpu",
              r"pip install .*--force-reinstall .*faiss-gpu")]
    assert order == sorted(order), "faiss-cpu is removed after the project install, faiss-gpu reinstalled after"


def check_sources(steps: list[tuple[str, str]]) -> None:
    """Nothing fetched by ADD; nothing secret or data-like copied by name."""
    for word, rest in steps:
        if word in ("ADD", "COPY"):
            sources = [s for s in shlex.split(rest) if not s.startswith("--")][:-1]
            assert word == "COPY", f"ADD {rest}: use COPY (ADD fetches URLs and unpacks archives)"
            for src in sources:
                assert not excluded_by(DEFAULT_SECRET_RULES, src.strip("/")), f"COPY of {src}"


DEFAULT_SECRET_RULES = ["**/*.pem", "**/*.key", "**/.env", "**/*auth_token*", "**/.ssh", "outputs", "data",
                        "**/*.db", "**/.pgpass"]


# --- evaluating .dockerignore ---------------------------------------------------------------------------------


def _regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def excluded_by(rules: list[str], path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context root) out of the build context under `rules`."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]  # the path and every folder above it
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        regex = _regex(rule.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def ignore_rules(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def needed_files() -> list[str]:
    """Every tracked file the install and the jobs need: the two packages, configs, entry points, scripts."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    roots = ("platform/mrl/", "benchmarks/mrlbench/", "jobs/", "serving/", "tuning/", "scripts/")
    files = [f for f in tracked.splitlines() if f.startswith(roots)]
    return [*files, "pyproject.toml", "README.md"]


def check_ignore(rules: list[str]) -> None:
    leaked = [p for p in MUST_STAY_OUT if not excluded_by(rules, p)]
    assert not leaked, f"sent to the Docker builder: {leaked}"
    missing = [p for p in needed_files() if excluded_by(rules, p)]
    assert not missing, f"left out of the build context but needed: {missing[:10]}"


# --- the tests ----------------------------------------------------------------------------------------------------


def test_the_base_image_is_the_pinned_ray_and_the_manifests_run_this_image():
    steps = instructions(DOCKERFILE.read_text())
    check_base(steps)
    version = re.search(r":(\d+\.\d+\.\d+)-", base_image(steps)).group(1)
    manifests = [d for f in sorted((REPO / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    clusters = [d for d in manifests if d["kind"] == "RayCluster"]
    assert clusters and all(c["spec"]["rayVersion"] == version for c in clusters)
    images = {c["image"] for d in manifests for c in containers(d) if not c["image"].startswith("postgres:")}
    assert images == {image_tag()}, f"the k8s pods run {images}, the Dockerfile builds {image_tag()}"


def containers(doc: dict) -> list[dict]:
    """Every container (and init container) of every pod template in a manifest."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers"):
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return found


def test_the_image_installs_the_project_as_an_unprivileged_user():
    steps = instructions(DOCKERFILE.read_text())
    check_sources(steps)
    check_install(steps)


def test_the_build_context_leaves_out_outputs_data_and_secrets_and_keeps_the_sources():
    rules = ignore_rules(DOCKERIGNORE.read_text())
    check_ignore(rules)
    assert len(needed_files()) > 100  # the walk found the packages


def test_the_ignore_rules_follow_dockers_semantics():
    assert excluded_by(["outputs"], "outputs/a/b.db") and not excluded_by(["outputs"], "x/outputs/a")
    assert excluded_by(["**/*.pem"], "a/b/c.pem") and excluded_by(["**/*.pem"], "c.pem")
    assert not excluded_by(["*.pem"], "a/c.pem") and excluded_by(["*.pem"], "c.pem")
    assert not excluded_by(["docs", "!docs/keep.md"], "docs/keep.md") and excluded_by(["docs"], "docs/x.md")
    assert excluded_by(["**/__pycache__"], "platform/mrl/__pycache__/x.pyc")
    assert not excluded_by(["data"], "platform/mrl/data/sources.py")  # the package `mrl.data` is not data/


@pytest.mark.parametrize("line", ["outputs", "**/*.pem", ".git", ".venv", "**/*auth_token*", "**/.env"])
def test_a_dockerignore_without_one_rule_is_refused(line):
    rules = ignore_rules(DOCKERIGNORE.read_text())
    assert line in rules
    with pytest.raises(AssertionError, match="sent to the Docker builder"):
        check_ignore([r for r in rules if r != line])


def test_a_rule_that_drops_the_sources_is_refused():
    rules = ignore_rules(DOCKERIGNORE.read_text())
    with pytest.raises(AssertionError, match="needed"):
        check_ignore([*rules, "**/*.yaml"])


@pytest.mark.parametrize("old, new, message", [
    ("FROM rayproject/ray:${RAY_VERSION}-py311-gpu", "FROM rayproject/ray:2.9.0-py311-gpu", "does not satisfy"),
    ("ARG RAY_VERSION=2.60.0\n", "ARG RAY_VERSION=2.60.1\n", "not the Ray installed here"),
    ("-py311-gpu", "-py311-cpu", "not a rayproject/ray GPU image"),
    ("-py311-gpu", "-py38-gpu", ""),
    ("USER ray", "USER root", "the base image's user"),
    ('pip install --no-cache-dir ".[gpu]"', 'pip install --no-cache-dir -e ".[gpu]"', "an editable install"),
    ("COPY --chown=1000:100 . /home/ray/mrl", "COPY --chown=1000:100 . /home/ray/mrl\nCOPY .env /home/ray/.env",
     "COPY of .env"),
    ("COPY --chown=1000:100 . /home/ray/mrl", "ADD --chown=1000:100 . /home/ray/mrl", "use COPY"),
    ('RUN pip install --no-cache-dir "torch==2.13.0"\n', "", "CUDA torch"),
    ("    && pip uninstall -y faiss-cpu \\\n", "", ""),
])
def test_broken_dockerfiles_are_refused(old, new, message):
    text = DOCKERFILE.read_text()
    assert old in text
    steps = instructions(text.replace(old, new, 1))
    with pytest.raises((AssertionError, StopIteration), match=message or None):
        check_base(steps)
        check_sources(steps)
        check_install(steps)
