"""Encoders and the assembled MRL model (mrl.core.models.encoders, mrl.core.models.model)."""

import pytest
import torch
from torch import nn

from mrl.configio import ConfigError
from mrl.core.models import MRLModel, build_model
from mrl.core.models.encoders import CompactCNN, build_encoder
from mrl.core.models.heads import MRLEHead, MRLHead

transformers = pytest.importorskip("transformers")

TINY_VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
TINY_BERT = dict(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=32)


def _spec(encoder, dim, sizes, **kw):
    return {"encoder": encoder, "dim": dim, "nesting": {"schedule": "list", "sizes": list(sizes)}, **kw}


def _check_outputs(model, x, batch, dim, sizes, classes):
    model.eval()
    with torch.no_grad():
        z = model.embed(x)
        outs = model(x)
    assert z.shape == (batch, dim)
    assert torch.isfinite(z).all()
    assert len(outs) == len(sizes)
    for out in outs:
        assert out.shape == (batch, classes)
    # forward == head applied to the embedding
    with torch.no_grad():
        again = model.classify(z)
    for a, b in zip(outs, again):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("encoder, dim, sizes, backbone, width", [
    ("cnn", 32, [4, 8, 32], {"channels": [4, 8]}, 32),
    ("resnet18", 64, [8, 16, 64], {}, 512),
    ("resnet50", 48, [8, 48], {}, 2048),
    ("vit", 16, [4, 16], TINY_VIT, 32),
])
def test_vision_models_shapes(encoder, dim, sizes, backbone, width):
    torch.manual_seed(0)
    model = build_model(_spec(encoder, dim, sizes, num_classes=7, backbone=backbone))
    assert isinstance(model, MRLModel)
    assert model.dim == dim and model.sizes == sizes
    assert model.encoder.width == width
    _check_outputs(model, torch.randn(2, 1, 28, 28), 2, dim, sizes, 7)


def test_bert_model_embeds_token_ids_without_a_head():
    torch.manual_seed(0)
    model = build_model(_spec("bert", 16, [4, 8, 16], head="none", backbone=TINY_BERT)).eval()
    assert model.encoder.width == 32 and model.modality == "text"
    ids = torch.tensor([[1, 5, 9, 0, 0], [2, 3, 4, 7, 8]])
    with torch.no_grad():
        z = model(ids, embed_only=True)
        assert z.shape == (2, 16) and torch.isfinite(z).all() and torch.equal(z, model.embed(ids))
        assert model(ids) == []  # no classifier


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_bert_ignores_padding_tokens(pooling):
    torch.manual_seed(0)
    model = build_model(_spec("bert", 16, [16], head="none", backbone=TINY_BERT, text={"pooling": pooling})).eval()
    with torch.no_grad():
        short = model.embed(torch.tensor([[1, 5, 9]]))
        padded = model.embed(torch.tensor([[1, 5, 9, 0, 0]]))
        other = model.embed(torch.tensor([[1, 5, 8, 0, 0]]))
    assert torch.allclose(short, padded, atol=1e-5)
    assert not torch.allclose(short, other, atol=1e-3)


def test_mean_pooling_averages_the_unpadded_states():
    torch.manual_seed(0)
    model = build_model(_spec("bert", 32, [32], head="none", backbone=TINY_BERT)).eval()
    ids = torch.tensor([[1, 5, 9, 0]])
    with torch.no_grad():
        states = model.encoder.model(input_ids=ids[:, :3]).last_hidden_state  # (1, 3, 32)
        assert torch.allclose(model.embed(ids), states.mean(1), atol=1e-5)


def test_text_encoder_needs_no_head():
    with pytest.raises(ConfigError, match="text encoder.*set head: none, not 'mrl'"):
        build_model(_spec("bert", 16, [16], backbone=TINY_BERT))


def test_rgb_vision_input():
    model = build_model(_spec("resnet18", 512, [8, 512], in_channels=3)).eval()
    with torch.no_grad():
        assert model.embed(torch.randn(2, 3, 28, 28)).shape == (2, 512)


def test_projection_identity_when_width_equals_dim():
    model = build_model(_spec("resnet18", 512, [8, 512]))
    assert model.encoder.width == 512
    assert isinstance(model.projection, nn.Identity)


def test_projection_linear_when_width_differs():
    model = build_model(_spec("resnet18", 64, [8, 64]))
    assert isinstance(model.projection, nn.Linear)
    assert (model.projection.in_features, model.projection.out_features) == (512, 64)
    vit = build_model(_spec("vit", 16, [16], backbone=TINY_VIT))
    assert isinstance(vit.projection, nn.Linear)
    assert (vit.projection.in_features, vit.projection.out_features) == (32, 16)


def test_cnn_width_is_dim_so_projection_is_identity():
    model = build_model(_spec("cnn", 24, [8, 24], backbone={"channels": [4, 4]}))
    assert isinstance(model.encoder, CompactCNN)
    assert model.encoder.width == 24
    assert isinstance(model.projection, nn.Identity)


def test_head_kind_and_spec_are_kept():
    spec = _spec("cnn", 16, [4, 16], head="mrl_e", num_classes=5, backbone={"channels": [4, 4]})
    model = build_model(spec)
    assert isinstance(model.head, MRLEHead)
    assert model.head.classifier.weight.shape == (5, 16)
    assert model.spec == spec
    assert isinstance(build_model(_spec("cnn", 16, [4, 16], backbone={"channels": [4, 4]})).head, MRLHead)


def test_build_model_uses_the_config_nesting_schedule():
    model = build_model({"encoder": "cnn", "dim": 64, "backbone": {"channels": [4, 4]}})
    assert model.sizes == [8, 16, 32, 64]
    assert [c.in_features for c in model.head.classifiers] == [8, 16, 32, 64]


def test_build_model_rejects_bad_specs():
    with pytest.raises(ConfigError, match=r"model\.encoder"):
        build_model(_spec("lstm", 16, [16]))
    with pytest.raises(ConfigError, match=r"model\.nesting"):
        build_model(_spec("cnn", 16, [8, 32]))


def test_build_encoder_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"encoder 'lstm' is not accepted"):
        build_encoder("lstm")


# ---------------------------------------------------------------- pretrained_path

def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_vit_loads_from_a_local_pretrained_directory(tmp_path):
    torch.manual_seed(5)
    cfg = transformers.ViTConfig(image_size=28, patch_size=7, num_channels=1, **TINY_VIT)
    saved = transformers.ViTModel(cfg, add_pooling_layer=False)
    saved.save_pretrained(tmp_path)
    enc = build_encoder("vit", in_channels=1, image_size=28, pretrained_path=str(tmp_path))
    assert enc.width == 32
    _same_weights(saved, enc.model)
    # through build_model as well: the saved backbone is used and projected to d
    model = build_model(_spec("vit", 16, [4, 16], pretrained_path=str(tmp_path)))
    _same_weights(saved, model.encoder.model)
    assert isinstance(model.projection, nn.Linear) and model.projection.in_features == 32
    saved.eval()
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model.encoder(x), saved(pixel_values=x).last_hidden_state[:, 0], atol=1e-5)


def test_bert_loads_from_a_local_pretrained_directory(tmp_path):
    torch.manual_seed(6)
    saved = transformers.BertModel(transformers.BertConfig(**TINY_BERT), add_pooling_layer=False)
    saved.save_pretrained(tmp_path)
    enc = build_encoder("bert", pretrained_path=str(tmp_path))
    assert enc.width == 32
    _same_weights(saved, enc.model)


def test_resnet_loads_from_a_local_pretrained_directory(tmp_path):
    torch.manual_seed(7)
    cfg = transformers.ResNetConfig(num_channels=1, layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16],
                                    embedding_size=8)
    saved = transformers.ResNetModel(cfg)
    saved.save_pretrained(tmp_path)
    enc = build_encoder("resnet18", in_channels=1, pretrained_path=str(tmp_path))
    assert enc.width == 16  # the saved model's own width, not ResNet-18's
    _same_weights(saved, enc.model)


def test_missing_pretrained_path_raises_file_not_found(tmp_path):
    missing = tmp_path / "no-such-model"
    for name in ("vit", "bert", "resnet18"):
        with pytest.raises(FileNotFoundError, match="no-such-model"):
            build_encoder(name, pretrained_path=str(missing))


def test_missing_pretrained_path_is_named_at_build_time(tmp_path):
    """The config accepts a path it cannot see (it may exist on the cluster); building the model names it."""
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="pretrained_path .*no-such-model.* is not a local directory"):
        build_model(_spec("vit", 16, [16], pretrained_path=str(missing)))

def test_projection_can_be_forced_when_the_encoder_is_already_d_wide():
    plain = build_model(_spec("bert", 32, [8, 32], head="none", backbone=TINY_BERT))
    forced = build_model(_spec("bert", 32, [8, 32], head="none", backbone=TINY_BERT, projection=True))
    assert isinstance(plain.projection, nn.Identity)
    assert isinstance(forced.projection, nn.Linear) and forced.projection.weight.shape == (32, 32)
