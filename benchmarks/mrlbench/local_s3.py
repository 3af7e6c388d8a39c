"""An S3 API on this machine for what runs against object storage here, where no AWS account exists: moto's server
(a real HTTP S3 API, in memory) in a process of its own on 127.0.0.1. The embed benchmark's S3 run and the test
suite's `s3_server` fixture both start it through `local_s3` (moto[server] is in the test extra)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

# moto accepts any credentials; these only have to be present, for pyarrow's and boto3's default chains
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def local_s3(start_timeout_s: float = 60.0) -> Iterator[str]:
    """Start moto's S3 server on a free port and point this process's environment at it (AWS_ENDPOINT_URL and the
    credentials; processes started meanwhile, a local Ray cluster's workers or a job, inherit them); yields the
    endpoint URL. The environment is restored and the server stopped on the way out.

    Raises:
        RuntimeError: the server did not answer within `start_timeout_s`.
    """
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, **ENV}
    saved = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.time() + start_timeout_s
        while True:
            try:
                requests.get(endpoint, timeout=2)
                break
            except requests.ConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto's S3 server did not start on port {port}") from None
                time.sleep(0.2)
        os.environ.update(env)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)
