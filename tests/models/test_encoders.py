"""Encoders: ResNet-18 against torchvision's architecture numbers, output shapes, the sequence
Transformer's padding mask, and the choice of encoder by shape or by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mmbalance.config import ModelConfig
from mmbalance.errors import ConfigError
from mmbalance.models import ENCODERS, build_encoder, default_encoder
from mmbalance.models.registry import encoder_for
from mmbalance.models.resnet import ResNet18, ResNet18Audio, ResNet18Video
from mmbalance.models.sequence import SmallCNN, TransformerSeqEncoder

#: torchvision.models.resnet18() has 11,689,512 parameters (its documented size), 62 tensors
TORCHVISION_RESNET18 = 11_689_512


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    yield


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def resnet18_by_hand(in_channels: int, classes: int = 0) -> int:
    """ResNet-18's parameters from its definition: 7x7 stem, BN (2 per channel), four stages
    of two basic blocks, 1x1 projections where the width or stride changes, optional fc."""
    conv = lambda k, c_in, c_out: k * k * c_in * c_out  # noqa: E731
    total = conv(7, in_channels, 64) + 2 * 64
    for c_in, c_out in [(64, 64), (64, 128), (128, 256), (256, 512)]:
        total += conv(3, c_in, c_out) + conv(3, c_out, c_out) + 4 * c_out
        total += conv(1, c_in, c_out) + 2 * c_out if c_in != c_out else 0
        total += 2 * conv(3, c_out, c_out) + 4 * c_out
    return total + (512 * classes + classes if classes else 0)


def test_resnet18_parameter_counts_match_torchvision():
    assert resnet18_by_hand(3, classes=1000) == TORCHVISION_RESNET18
    trunk = ResNet18(in_channels=3)
    assert count(trunk) == resnet18_by_hand(3) == 11_176_512  # torchvision's without fc (513,000)
    assert count(trunk) + count(nn.Linear(512, 1000)) == TORCHVISION_RESNET18
    assert count(ResNet18Video()) == 11_176_512
    assert count(ResNet18Audio()) == resnet18_by_hand(1) == 11_176_512 - 64 * 7 * 7 * 2  # 1-channel stem
    assert len(list(trunk.parameters())) == 62 - 2  # torchvision's tensors minus fc.weight, fc.bias


def test_resnet18_uses_torchvision_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in ResNet18().state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer3.0.downsample.1.running_mean"] == (256,)
    assert shapes["layer4.1.bn2.bias"] == (512,)
    assert "layer1.0.downsample.0.weight" not in shapes


def test_audio_encoder_shapes():
    enc = ResNet18Audio(width=8)
    assert enc(torch.randn(2, 257, 40)).shape == (2, 64) == enc(torch.randn(2, 1, 257, 40)).shape
    assert ResNet18Audio().out_dim == 512


def test_video_encoder_pools_frames_over_time_and_space():
    enc = ResNet18Video(width=8).eval()
    frame = torch.randn(2, 3, 32, 32)
    clip = frame.unsqueeze(2).expand(2, 3, 3, 32, 32)  # (B, 3, T, H, W), T identical frames
    with torch.no_grad():
        assert enc(clip).shape == (2, 64)
        assert torch.allclose(enc(clip), enc(frame), atol=1e-5)
        two = torch.stack([frame, -frame], dim=2)
        expected = (enc.feature_maps(frame) + enc.feature_maps(-frame)).mean(dim=(-2, -1)) / 2
        assert torch.allclose(enc(two), expected, atol=1e-5)


def test_transformer_seq_depth_shape_and_padding_mask():
    enc = TransformerSeqEncoder(in_dim=6, d_model=40, layers=5).eval()
    assert len(enc.transformer.layers) == 5 and enc.transformer.layers[0].self_attn.num_heads == 5
    x = torch.randn(3, 4, 6)
    padded = torch.cat([torch.zeros(3, 2, 6), x], dim=1)  # MultiBench pads at the front
    with torch.no_grad():
        assert enc(x).shape == (3, 40)
        assert torch.allclose(enc(padded), enc(x), atol=1e-5)
        assert torch.isfinite(enc(torch.zeros(2, 4, 6))).all()
    mean = TransformerSeqEncoder(6, 10, 1, 16, pool="mean").eval()
    with torch.no_grad():
        assert torch.allclose(mean(padded), mean(x), atol=1e-5)


def test_small_cnn_and_registry_factories():
    cfg = ModelConfig(feature_dim=12, base_width=8)
    assert SmallCNN(3, 12)(torch.randn(2, 3, 20, 24)).shape == (2, 12)
    shapes = {"mlp": (7,), "cnn2d": (3, 20, 24), "transformer_seq": (5, 7), "resnet18_audio": (64, 30),
              "resnet18_video": (3, 2, 32, 32)}
    for name, shape in shapes.items():
        enc = build_encoder(name, shape, cfg)
        assert enc(torch.randn(2, *shape)).shape == (2, enc.out_dim), name
    assert set(shapes) <= set(ENCODERS)


def test_default_encoder_by_shape_and_override_by_name():
    assert [default_encoder(s) for s in [(7,), (5, 7), (3, 8, 8)]] == ["mlp", "transformer_seq", "cnn2d"]
    mods = {"audio": (64, 30), "video": (3, 2, 8, 8)}
    assert encoder_for("audio", "mlp", mods) == "mlp"
    assert encoder_for("audio", "video:cnn2d", mods) is None
    assert encoder_for("video", "audio:mlp, video:resnet18_video", mods) == "resnet18_video"
    with pytest.raises(ConfigError, match="names modality 'face'"):
        encoder_for("audio", "face:mlp", mods)
    with pytest.raises(ConfigError, match="expected NAME or MODALITY:NAME"):
        encoder_for("audio", "audio:", mods)


def test_users_images_train_with_cnn2d_and_override(tmp_path):
    from mmbalance.config import build_config
    from mmbalance.methods import get_method
    from mmbalance.training import build_data, build_model

    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, image=rng.normal(size=(30, 1, 8, 8)).astype(np.float32),
             series=rng.normal(size=(30, 4, 3)).astype(np.float32), label=np.arange(30) % 2)
    cfg = build_config("joint", str(path), {"model.feature_dim": 10}, get_method("joint").Hyperparameters)
    model = build_model(build_data(cfg), cfg)
    assert isinstance(model.encoders["image"], SmallCNN)
    assert isinstance(model.encoders["series"], TransformerSeqEncoder)
    cfg = build_config("joint", str(path), {"model.feature_dim": 10, "model.encoder": "series:mlp"},
                       get_method("joint").Hyperparameters)
    model = build_model(build_data(cfg), cfg)
    assert isinstance(model.encoders["image"], SmallCNN) and not isinstance(model.encoders["series"], TransformerSeqEncoder)
