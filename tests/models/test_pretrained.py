"""The optional ``transformers`` backbones, on tiny randomly initialized models saved to a
local directory (nothing is fetched)."""

from __future__ import annotations

import logging

import pytest
import torch

from mmbalance.errors import ConfigError
from mmbalance.models.pretrained import PretrainedEncoder, pretrained_dir

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny wav2vec2 (audio), ViT (images) and ViViT (clips of 2 frames), saved locally."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    models = {
        "wav2vec2": transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
            **small, conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4,
            num_conv_pos_embedding_groups=2, vocab_size=4)),
        "vit": transformers.ViTModel(transformers.ViTConfig(**small, image_size=16, patch_size=8)),
        "vivit": transformers.VivitModel(transformers.VivitConfig(**small, image_size=16, num_frames=2,
                                                                   tubelet_size=[2, 8, 8])),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
    return {name: root / name for name in models}


def test_backbones_give_one_feature_per_sample(dirs):
    audio = PretrainedEncoder(dirs["wav2vec2"]).eval()
    image = PretrainedEncoder(dirs["vit"]).eval()
    video = PretrainedEncoder(dirs["vivit"]).eval()
    clip = torch.randn(2, 3, 2, 16, 16)  # (B, C, T, H, W) as the loaders give it
    with torch.no_grad():
        assert audio(torch.randn(2, 4000)).shape == (2, 16) == audio(torch.randn(2, 1, 4000)).shape
        per_frame = torch.stack([image(clip[:, :, t]) for t in range(2)]).mean(0)
        assert torch.allclose(image(clip), per_frame, atol=1e-5)  # image model: frame by frame
        assert video(clip).shape == (2, 16) and video.video_model
    assert audio.out_dim == 16


def test_directory_choice_and_errors(tmp_path):
    assert pretrained_dir("/m", "audio") == "/m"
    assert pretrained_dir("audio=/a, video=/v", "video") == "/v"
    with pytest.raises(ConfigError, match="no directory for modality 'text'"):
        pretrained_dir("audio=/a", "text")
    with pytest.raises(ConfigError, match="needs --set model.pretrained"):
        pretrained_dir(None, "audio")
    with pytest.raises(ConfigError, match="holds no config.json"):
        PretrainedEncoder(tmp_path)


def test_cremad_waveforms_train_with_pretrained_encoders(dirs, tmp_path):
    from mmbalance.testing.fixtures import write_cremad

    from ..data._common import train_cli

    # planted signal (grey level and tone follow the label); 5 training clips per class, of
    # which val_fraction 0.2 carves 1, and 3 test clips per class: 24/6/18, chance 1/6.
    # Measured over run seeds 0-4 (3 epochs, lr 0.01): 1.00 each.
    write_cremad(tmp_path / "cremad", train_per_class=5, test_per_class=3, signal=True)
    metrics = train_cli("cremad", tmp_path / "cremad", tmp_path / "run", "data.audio_input=waveform",
                        "data.sample_rate=16000", "model.encoder=audio:pretrained,video:pretrained",
                        f"model.pretrained=audio={dirs['wav2vec2']},video={dirs['vit']}",
                        "data.val_fraction=0.2", "trainer.max_epochs=3", "optim.lr=0.01")
    # at least 12 of 18 right (the bound sits between counts, clear of float32 rounding), chance
    # 3; labels shuffled against the inputs reach 12 with p < 1e-5
    assert metrics["test"]["accuracy"] >= 1 / 6 + 0.45
