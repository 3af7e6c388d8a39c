# The image every pod in k8s/ runs: the Ray head and GPU workers, the RayJob submitter and the MLflow server.
# Ray comes from the base image; on top of it CUDA PyTorch, faiss-gpu, the PostgreSQL driver the MLflow server
# needs, and this project installed as a regular (not editable) package. The repo's jobs/, serving/, tuning/ and
# scripts/ stay beside it in /home/ray/mrl, the working directory RayJob entrypoints (`python jobs/train.py`) run
# from.
#
#   docker build -t mrl-platform:latest .
#
# The Ray version of the base tag is the one pyproject.toml pins and k8s/raycluster.yaml declares as rayVersion;
# tests/test_dockerfile.py checks them against each other, and what .dockerignore keeps out (outputs, data, .git,
# .venv, keys and tokens), offline. The image has not been built here (no Docker on the development machines).
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu
ARG RAY_VERSION

# The base image's unprivileged user (uid 1000, group users); its conda Python under /home/ray is writable by it,
# so nothing below runs as root. The source folder is made by that user (WORKDIR alone would make it root's, and
# the install writes its build files into it).
USER ray
RUN mkdir -p /home/ray/mrl
WORKDIR /home/ray/mrl

# PyPI's Linux torch wheel is the CUDA build (its CUDA runtime comes as nvidia-* wheels). Installed first, at the
# version setup.sh puts on CPU machines, so that resolving the project does not pick another.
RUN pip install --no-cache-dir "torch==2.13.0"

COPY --chown=1000:100 . /home/ray/mrl

# The project with its gpu extra (faiss-gpu-cu12). faiss-cpu is a base dependency and ships the same `faiss`
# files, so it is removed afterwards and faiss-gpu reinstalled over the files its removal deleted (as in
# cluster.yaml's setup_commands). The build leftovers go; the import check runs outside the source tree.
RUN pip install --no-cache-dir ".[gpu]" "psycopg2-binary>=2.9" \
    && pip uninstall -y faiss-cpu \
    && pip install --no-cache-dir --no-deps --force-reinstall "faiss-gpu-cu12>=1.8" \
    && rm -rf build platform/*.egg-info benchmarks/*.egg-info \
    && cd /tmp && python -c "import faiss, mrl, psycopg2, ray; assert hasattr(faiss, 'StandardGpuResources'); \
assert '/site-packages/' in mrl.__file__, mrl.__file__; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"
