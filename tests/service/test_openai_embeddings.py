"""POST /v1/embeddings without Ray or HTTP: the request model, the pure functions of `mrl.service.embeddings`, and
`RetrievalService.embed` with real image and text models (the e2e test drives the same route with the `openai`
client)."""

import base64
import io

import numpy as np
import pytest

from mrl.artifacts.index import load_index, write_index
from mrl.config import ServeConfig
from mrl.retrieval.modes import SearchSettings
from mrl.service import embeddings
from mrl.service.embeddings import EmbeddingsRefused
from mrl.service.retrieval import RequestError, RetrievalService

CFG = ServeConfig(search=SearchSettings(shortlist_size=4), max_embed_inputs=8)


def unit_prefixes(vectors: np.ndarray, size: int) -> np.ndarray:
    head = vectors[:, :size]
    return head / np.linalg.norm(head, axis=1, keepdims=True)


def png_b64(pixels: np.ndarray) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_sizes_must_be_nesting_sizes_and_default_to_d():
    assert embeddings.check_size(None, [4, 8, 16], 16) == 16
    assert embeddings.check_size(8, [4, 8, 16], 16) == 8
    with pytest.raises(EmbeddingsRefused, match=r"dimensions=5 is not one of this model's trained sizes \[4, 8, 16\]"):
        embeddings.check_size(5, [4, 8, 16], 16)


def test_inputs_are_checked_and_images_decoded_from_data_urls_or_base64():
    png = png_b64(np.zeros((28, 28), np.uint8))
    raw = base64.b64decode(png)
    assert embeddings.as_inputs([png, f"data:image/png;base64,{png}"], "image", 8, 100) == [raw, raw]
    assert embeddings.as_inputs("a cat", "text", 8, 100) == ["a cat"]
    assert embeddings.as_inputs([2, 7, 3], "text", 8, 100) == [(2, 7, 3)]  # one token array
    assert embeddings.as_inputs([[2, 7, 3], [2, 3]], "text", 8, 100) == [(2, 7, 3), (2, 3)]
    for given, kind, message in (([], "text", "input is empty"),
                                 (["x"] * 9, "text", "9 items, above the limit of 8"),
                                 (["ok", ""], "text", r"input\[1\] is empty"),
                                 (["x" * 101], "text", r"input\[0\] has 101 characters"),
                                 ([png, "not base64!"], "image", r"input\[1\]: this model reads images"),
                                 (["data:text/plain;base64,aGk="], "image", r"input\[0\] is a data URL but not"),
                                 ([2, 7, 3], "image", "input holds token ids, which only text models read"),
                                 ([[2, 3]] * 9, "text", "9 token arrays, above the limit of 8"),
                                 ([[2, 3], []], "text", r"input\[1\] holds 0 token ids; give 1 to 100")):
        with pytest.raises(EmbeddingsRefused, match=message) as refused:
            embeddings.as_inputs(given, kind, 8, 100)
        assert refused.value.status == 422


def test_reply_is_the_unit_prefix_as_floats_or_little_endian_base64():
    vectors = [np.array([3.0, 4.0, 12.0], np.float32), np.array([0.0, 0.0, 1.0], np.float32)]
    floats = embeddings.reply(vectors, 2, "float", "models:/m/1", [5, 7])
    assert floats["object"] == "list" and floats["model"] == "models:/m/1"
    assert floats["usage"] == {"prompt_tokens": 12, "total_tokens": 12}
    assert [d["index"] for d in floats["data"]] == [0, 1]
    np.testing.assert_allclose(floats["data"][0]["embedding"], [0.6, 0.8], rtol=1e-6)
    assert floats["data"][1]["embedding"] == [0.0, 0.0]  # a zero prefix stays zero, no NaN
    packed = embeddings.reply(vectors, 2, "base64", "models:/m/1", [0, 0])["data"][0]["embedding"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(packed), "<f4"), [0.6, 0.8], rtol=1e-6)
    with pytest.raises(EmbeddingsRefused, match=r"input\[1\]: not a readable image"):
        embeddings.reply([vectors[0], "not a readable image"], 2, "float", "m", [0, 0])


@pytest.fixture(scope="module")
def image_service(tmp_path_factory):
    from mrl.service.encoder import QueryEncoder

    from conftest import tiny_image_index

    model_dir, images, vectors, index = tiny_image_index(tmp_path_factory.mktemp("embeddings"), 50, (4, 8, 16))
    service = RetrievalService(load_index(index), CFG, encoder=QueryEncoder(str(model_dir)))
    return service, images, vectors, str(model_dir)


def test_image_embeddings_are_the_models_unit_prefixes_at_every_trained_size(image_service):
    service, images, vectors, model_uri = image_service
    inputs = [png_b64(images[i, 0]) for i in range(5)]
    for size in (4, 8, 16):  # 8 is a trained size the index does not hold: still served
        for fmt in ("float", "base64"):
            reply = service.embed({"model": model_uri, "input": inputs, "dimensions": size, "encoding_format": fmt})
            got = np.array([d["embedding"] if fmt == "float" else np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
                            for d in reply["data"]])
            assert got.shape == (5, size)
            cosine = np.sum(got * unit_prefixes(vectors[:5], size), axis=1)
            assert cosine.min() >= 0.9999, cosine
    assert len(service.embed({"model": model_uri, "input": inputs[0]})["data"][0]["embedding"]) == 16


@pytest.mark.parametrize("change, status, message", [
    ({"dimensions": 12}, 422, r"not one of this model's trained sizes \[4, 8, 16\]"),
    ({"model": "text-embedding-3-small"}, 404, "model 'text-embedding-3-small' is not served here"),
    ({"input": ["hello"]}, 422, r"input\[0\]: this model reads images"),
    ({"encoding_format": "float16"}, 422, "encoding_format"),
    ({"input": [1, 2, 3]}, 422, "input holds token ids, which only text models read"),
    ({"input": [[1, 2], ["a"]]}, 422, "input"),
    ({"extra": 1}, 422, "extra"),
])
def test_bad_embeddings_requests_are_refused_naming_the_problem(image_service, change, status, message):
    service, images, _, model_uri = image_service
    body = {"model": model_uri, "input": [png_b64(images[0, 0])], **change}
    with pytest.raises(RequestError, match=message) as refused:
        service.embed(body)
    assert refused.value.status == status


def test_a_service_without_a_model_embeds_nothing(image_service):
    service, _, _, model_uri = image_service
    bare = RetrievalService(service.artifact, CFG)
    assert bare.models() == {"object": "list", "data": []}
    with pytest.raises(RequestError, match="embeds nothing") as refused:
        bare.embed({"model": model_uri, "input": "x"})
    assert refused.value.status == 404
    assert service.models()["data"][0]["id"] == model_uri


def test_text_embeddings_use_the_models_tokenizer(tmp_path):
    from mrl.artifacts.model_files import save_model_dir
    from mrl.service.encoder import QueryEncoder

    from conftest import tiny_text_model

    texts = [f"{a} by the {b}" for a in ("cat", "dog", "bird", "fish") for b in ("river", "tree", "house")]
    model = tiny_text_model(texts)
    model_dir = save_model_dir(model, tmp_path / "model")
    vectors = model.embed_texts(texts)
    write_index(tmp_path / "index", np.arange(12), np.zeros(12, dtype=np.int64), vectors, [4, 16], "flat",
                {"model_uri": str(model_dir), "modality": "text"})
    service = RetrievalService(load_index(tmp_path / "index"), CFG, encoder=QueryEncoder(str(model_dir)))
    reply = service.embed({"model": str(model_dir), "input": texts[:6], "dimensions": 4})
    got = np.array([d["embedding"] for d in reply["data"]])
    assert np.sum(got * unit_prefixes(vectors[:6], 4), axis=1).min() >= 0.9999
    ids = model.tokenizer.encode(texts[:6])
    assert reply["usage"]["prompt_tokens"] == reply["usage"]["total_tokens"] == int(np.count_nonzero(ids)) > 6 * 2

    # the same texts as token arrays of the model's own vocabulary: the same vectors and the same count
    arrays = [[int(t) for t in row if t] for row in ids]
    by_ids = service.embed({"model": str(model_dir), "input": arrays, "dimensions": 4})
    got = np.array([d["embedding"] for d in by_ids["data"]])
    assert np.sum(got * unit_prefixes(vectors[:6], 4), axis=1).min() >= 0.9999
    assert by_ids["usage"] == reply["usage"]
    one = service.embed({"model": str(model_dir), "input": arrays[2]})  # one array: one input
    assert len(one["data"]) == 1 and one["usage"]["prompt_tokens"] == len(arrays[2])
    np.testing.assert_allclose(one["data"][0]["embedding"], unit_prefixes(vectors[2:3], 16)[0], atol=1e-5)

    vocab, length = model.tokenizer.vocab_size, model.tokenizer.max_tokens
    for given, message in (([arrays[0], [2, vocab, 3]], rf"input\[1\]: token id {vocab} is outside this model's "
                                                        rf"vocabulary \(ids 0 to {vocab - 1}"),
                           ([[2] * (length + 1)], rf"input\[0\]: {length + 1} token ids, above this model's "
                                                  rf"sequence length of {length}"),
                           ([[2, -1, 3]], r"input\[0\]: token id -1 is outside")):
        with pytest.raises(RequestError, match=message) as refused:
            service.embed({"model": str(model_dir), "input": given})
        assert refused.value.status == 422
