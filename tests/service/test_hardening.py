"""What no single request or config may do to the service: a bomb image fails only its own request, an open
service on a network address needs a decision, enumerated fields refuse empty strings."""

import base64
import io

import numpy as np
import pytest

from mrl.artifacts.index import load_index
from mrl.configio import ConfigError, from_dict
from mrl.retrieval.modes import SearchSettings
from mrl.service.config import ServeConfig, is_loopback
from mrl.service.retrieval import RequestError, RetrievalService

from conftest import png_declaring, tiny_image_index


@pytest.fixture(scope="module")
def image_service(tmp_path_factory):
    from mrl.service.encoder import QueryEncoder

    model_dir, images, _, index = tiny_image_index(tmp_path_factory.mktemp("hardening"), 100)
    service = RetrievalService(load_index(index), ServeConfig(search=SearchSettings(shortlist_size=4)),
                               encoder=QueryEncoder(str(model_dir)))
    return service, images


def b64_png(pixels: np.ndarray) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_a_bomb_in_a_batch_fails_only_its_own_request(image_service):
    service, images = image_service
    bomb = base64.b64encode(png_declaring(20000, 20000)).decode()
    big = base64.b64encode(png_declaring(5000, 5000)).decode()  # under Pillow's limit, over serve.max_image_pixels
    requests = [{"image": b64_png(images[3, 0]), "k": 3}, {"image": bomb}, {"id": 5, "k": 2}, {"image": big},
                {"vector": [0.5] * 16, "k": 1}]
    embedded, todo = service.pending_content(requests)
    embedded.update(zip(todo, service.encoder(list(todo.values()))))  # what the Encoder deployment returns
    replies = service.search_batch(requests, embedded)
    assert isinstance(replies[1], RequestError) and replies[1].status == 422
    assert "too large" in str(replies[1].detail) and "serve.max_image_pixels" in str(replies[1].detail)
    assert isinstance(replies[3], RequestError) and "5000 x 5000 = 25000000 pixels" in str(replies[3].detail)
    assert replies[0]["ids"][0] == 3 and replies[2]["ids"][0] == 5 and len(replies[4]["ids"]) == 1


def test_an_empty_mode_is_refused_not_read_as_the_default(image_service):
    service, _ = image_service
    with pytest.raises(RequestError) as err:
        service.search({"id": 1, "mode": ""})
    assert err.value.status == 422 and err.value.detail[0]["loc"][0] == "mode"
    assert service.search({"id": 1, "mode": None, "k": 1})["ids"] == [1]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "::", "example.org"])
def test_a_network_host_without_a_key_is_refused(host):
    with pytest.raises(ConfigError, match=f"host '{host}' serves other machines, and the service has no API key"):
        from_dict(ServeConfig, {"host": host}, prefix="serve.")
    assert ServeConfig(host=host, allow_anonymous=True).host == host
    assert ServeConfig(host=host, api_key_env="MRL_KEY").host == host


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("fields, message", [
    ({"image_formats": ["PNG", "EPS"]}, r"image_formats \['PNG', 'EPS'\] must be a non-empty subset of"),
    ({"image_formats": []}, "must be a non-empty subset"),
    ({"max_image_pixels": 0}, "max_image_pixels must be > 0"),
    ({"request_timeout_s": 0}, "request_timeout_s must be > 0"),
    ({"max_queued_requests": 0}, r"max_queued_requests must be -1 \(unbounded\) or >= 1, got 0"),
])
def test_limits_are_validated(fields, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ServeConfig, fields, prefix="serve.")


def test_an_encoder_fault_answers_503_to_its_requests_and_the_batch_goes_on(image_service):
    """The Retriever's batch path (`answer_batch`) with an encoder that fails: a real QueryEncoder whose model
    was moved to PyTorch's meta device, so every forward pass raises."""
    import asyncio
    import copy

    from mrl.service.app import answer_batch

    service, images = image_service
    broken = copy.copy(service.encoder)
    broken.model = copy.deepcopy(service.encoder.model).to("meta")

    async def embed(queries):
        return await asyncio.to_thread(broken.embed, queries)  # the Encoder deployment's answer: (vectors, tokens)

    requests = [{"id": 5, "k": 2}, {"image": b64_png(images[3, 0])}, {"vector": [0.5] * 16, "k": 1},
                {"image": b64_png(images[4, 0])}]
    replies = asyncio.run(answer_batch(service, embed, requests))
    for i in (1, 3):
        assert isinstance(replies[i], RequestError) and replies[i].status == 503
        assert "the encoder could not embed this query" in replies[i].detail
    assert replies[0]["ids"][0] == 5 and len(replies[2]["ids"]) == 1

    async def working(queries):
        return await asyncio.to_thread(service.encoder.embed, queries)

    assert asyncio.run(answer_batch(service, working, requests))[1]["ids"][0] == 3  # the same batch, a sound encoder
