"""The Conformer encoder: shapes, one block against a brute-force computation from torch
primitives, what padding guarantees (eval mode; masked BatchNorm in training mode), gradient
flow, and the registry factories (a tiny randomly initialized backbone; nothing is fetched)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mmbalance.config import ModelConfig
from mmbalance.errors import ConfigError
from mmbalance.models import build_encoder
from mmbalance.models.conformer import ConformerBlock, ConformerEncoder, MaskedBatchNorm1d

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _padded(lengths, t, d, seed=0):
    """(B, t, d) random rows, each zero past its length, and the (B, t) padding mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), t, d, generator=g)
    pad = torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]
    return x.masked_fill(pad[..., None], 0.0), pad


def _small(**kw):
    torch.manual_seed(0)
    args = dict(d_model=16, layers=2, kernel_size=5, dropout=0.0, bottleneck=6)
    args.update(kw)
    return ConformerEncoder(12, **args)


def test_shapes_width_depth_and_heads():
    enc = _small(layers=3)
    assert enc(torch.randn(4, 9, 12)).shape == (4, 16) and enc.out_dim == 16
    assert enc(torch.randn(4, 12)).shape == (4, 16)  # (B, D): one step
    h, valid = enc.sequence(torch.randn(2, 9, 12))
    assert h.shape == (2, 9, 16) and valid.all() and len(enc.blocks) == 3
    assert enc.blocks[0].attn.heads == 8 and _small(d_model=12).blocks[0].attn.heads == 4
    assert ConformerEncoder(12, d_model=16, heads=2).blocks[0].attn.heads == 2
    assert len(ConformerEncoder(12).blocks) == 5 and ConformerEncoder(12).out_dim == 512  # the paper's model
    with pytest.raises(ValueError, match="odd"):
        ConformerEncoder(12, d_model=16, kernel_size=4)


def test_the_authors_sizes_give_the_authors_parameter_count():
    """1408 face features -> 50 -> 512, 5 blocks (kkontras/MCR Video_FacesConformer): every
    layer of their blocks, counted by hand."""
    d, k, D, v = 512, 31, 1408, 50
    ff = 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)  # LayerNorm, Linear(d, 4d), Linear(4d, d)
    attn = 2 * d + 4 * (d * d + d) + d * d + 2 * d  # LayerNorm, q k v out, bias-free pos, u and v
    conv = 2 * d + (d * 2 * d + 2 * d) + d * k + 2 * d + (d * d + d)  # LN, pointwise, depthwise, BN, pointwise
    block = 2 * ff + attn + conv + 2 * d  # and the final LayerNorm
    enc = ConformerEncoder(D, d_model=d, layers=5, bottleneck=v)
    assert sum(p.numel() for p in enc.parameters()) == D * v + (v * d + d) + 5 * block


def _sinusoid(r, d):
    return torch.tensor([math.sin(r / 10000 ** (k / d)) if k % 2 == 0 else math.cos(r / 10000 ** ((k - 1) / d))
                         for k in range(d)], dtype=torch.float64)


def _ln(mod, z):
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    return (z - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def _lin(mod, z):
    out = z @ mod.weight.T
    return out + mod.bias if mod.bias is not None else out


def _ff(mod, z):
    h = _lin(mod.net[1], _ln(mod.net[0], z))
    return _lin(mod.net[4], h * torch.sigmoid(h))


def _attention(a, z, valid):
    b, t, d = z.shape
    hd = a.d_head
    q, k, v = (_lin(m, z).view(b, t, a.heads, hd) for m in (a.query, a.key, a.value))
    rel = {r: _lin(a.pos, _sinusoid(r, d)).view(a.heads, hd) for r in range(-(t - 1), t)}
    context = torch.zeros(b, t, a.heads, hd, dtype=z.dtype)
    for n in range(b):
        for h in range(a.heads):
            for i in range(t):
                keys = [j for j in range(t) if valid[n, j]]
                s = torch.stack([((q[n, i, h] + a.u_bias[h]) @ k[n, j, h]
                                  + (q[n, i, h] + a.v_bias[h]) @ rel[i - j][h]) / math.sqrt(hd) for j in keys])
                w = torch.exp(s - s.max())
                w = w / w.sum()
                context[n, i, h] = sum(w[idx] * v[n, j, h] for idx, j in enumerate(keys))
    return _lin(a.out, context.reshape(b, t, d))


def _conv(c, z, valid):
    b, t, d = z.shape
    e = _ln(c.norm, z) @ c.expand.weight[:, :, 0].T + c.expand.bias
    g = e[..., :d] * torch.sigmoid(e[..., d:]) * valid[..., None]
    k = c.depthwise.kernel_size[0]
    dw = torch.zeros_like(g)
    for n in range(b):
        for i in range(t):
            for o in range(k):
                src = i + o - k // 2
                if 0 <= src < t:
                    dw[n, i] += c.depthwise.weight[:, 0, o] * g[n, src]
    real = dw[valid]  # (number of real steps, d): the training batch statistics
    mean, var = real.mean(0), ((real - real.mean(0)) ** 2).mean(0)
    y = (dw - mean) / torch.sqrt(var + c.batch_norm.eps) * c.batch_norm.weight + c.batch_norm.bias
    y = y * torch.sigmoid(y)
    return y @ c.project.weight[:, :, 0].T + c.project.bias


def _reference_block(blk, x, valid):
    x = x + 0.5 * _ff(blk.ff1, x)
    x = x + _attention(blk.attn, _ln(blk.attn_norm, x), valid)
    x = x + _conv(blk.conv, x, valid)
    x = x + 0.5 * _ff(blk.ff2, x)
    return _ln(blk.norm, x)


def test_one_block_matches_a_brute_force_computation():
    torch.manual_seed(0)
    blk = ConformerBlock(8, heads=2, ff_mult=2, kernel_size=3, dropout=0.0).double().train()
    with torch.no_grad():  # non-trivial affine parameters and biases everywhere
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        got = blk(x, valid)
        want = _reference_block(blk, x, valid)
    # float64 on both sides: the two differ only in summation order (einsum/gather vs loops,
    # fused vs written-out LayerNorm), about 1e-15 relative; 1e-10 leaves room and still
    # catches any wrong term (those are O(0.1)).
    assert torch.allclose(got, want, atol=1e-10, rtol=0)


def test_padding_changes_no_real_step_in_eval_mode():
    enc = _small(dropout=0.1).eval()  # dropout is off in eval mode; BatchNorm uses running stats
    x, pad = _padded([9, 6, 3], 9, 12)
    with torch.no_grad():
        batch = enc(x)
        longer = enc(torch.cat([x, torch.zeros(3, 4, 12)], 1))  # more padding
        alone = torch.stack([enc(x[i:i + 1, :n]) for i, n in enumerate([9, 6, 3])])[:, 0]
        explicit = enc(x, pad)
        other = x.clone()
        other[0] += 5.0  # another row of the batch changes
        changed = enc(other)
    # float32, different sequence lengths: the same values through differently shaped kernels
    assert torch.allclose(batch, alone, atol=1e-5) and torch.allclose(batch, longer, atol=1e-5)
    assert torch.equal(batch, explicit)  # the zero rows are the explicit mask
    assert torch.allclose(changed[1:], batch[1:], atol=1e-6) and not torch.allclose(changed[0], batch[0])


def test_in_training_mode_batchnorm_sees_only_real_steps():
    enc = _small().train()  # dropout 0: training differs from eval only by BatchNorm
    x, _ = _padded([9, 6, 3], 9, 12)
    out = enc(x)
    stats = [b.conv.batch_norm.running_mean.clone() for b in enc.blocks]
    enc2 = _small().train()
    out2 = enc2(torch.cat([x, torch.zeros(3, 5, 12)], 1))
    assert torch.allclose(out, out2, atol=1e-5)
    assert all(torch.allclose(s, b.conv.batch_norm.running_mean, atol=1e-6) for s, b in zip(stats, enc2.blocks))


def test_masked_batchnorm_is_batchnorm_of_the_real_steps():
    torch.manual_seed(0)
    masked, plain = MaskedBatchNorm1d(4), nn.BatchNorm1d(4)
    plain.load_state_dict(masked.state_dict())
    x = torch.randn(3, 4, 6)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    got = masked(x, valid)
    real = x.transpose(1, 2)[valid]  # (11, 4): the real steps as a batch of vectors
    want = plain(real[:, :, None])[:, :, 0]
    assert torch.allclose(got.transpose(1, 2)[valid], want, atol=1e-6)
    assert torch.allclose(masked.running_mean, plain.running_mean) and torch.allclose(masked.running_var,
                                                                                      plain.running_var)
    assert torch.equal(MaskedBatchNorm1d(4)(x, torch.ones(3, 6, dtype=torch.bool)), nn.BatchNorm1d(4)(x))


def test_gradient_reaches_every_parameter():
    enc = _small(dropout=0.1).train()
    x, _ = _padded([9, 4], 9, 12)
    x.requires_grad_(True)
    enc(x).pow(2).sum().backward()
    dead = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
    assert x.grad[1, 4:].abs().sum() == 0 and x.grad[1, :4].abs().sum() > 0  # padding is never read


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """A tiny randomly initialized wav2vec2 (audio), HuBERT (AVE's audio) and ViViT (2-frame
    clips), saved locally."""
    transformers = pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    small = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    audio = dict(small, conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4,
                 num_conv_pos_embedding_groups=2, vocab_size=4)
    transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**audio)).save_pretrained(root / "w2v")
    transformers.HubertModel(transformers.HubertConfig(**audio)).save_pretrained(root / "hubert")
    transformers.VivitModel(transformers.VivitConfig(**small, image_size=16, num_frames=2,
                                                      tubelet_size=[2, 8, 8])).save_pretrained(root / "vivit")
    return {"audio": root / "w2v", "hubert": root / "hubert", "video": root / "vivit"}


def test_registry_factories_and_a_backbone_then_conformer(backbones):
    cfg = ModelConfig(feature_dim=16, hidden=6, layers=1, dropout=0.1)
    enc = build_encoder("conformer", (20, 12), cfg)
    assert isinstance(enc, ConformerEncoder) and enc.out_dim == 16 and len(enc.blocks) == 1
    assert enc.proj[0].in_features == 12 and enc.proj[0].out_features == 6
    cfg.pretrained = f"audio={backbones['audio']}"
    enc = build_encoder("pretrained_conformer", (4000,), cfg, modality="audio")
    assert enc.out_dim == 16 and enc.conformer.proj[0].in_features == 8  # the backbone's width
    wave = torch.randn(3, 4000)
    enc.eval()
    with torch.no_grad():
        steps = enc.backbone.sequence(wave)
        assert steps.shape[:2] == (3, 399) and enc(wave).shape == (3, 16)
        assert torch.allclose(enc(wave), enc.conformer(steps), atol=1e-6)
    enc.train()
    enc(wave).sum().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match=r"takes waveforms but the data gives samples of shape \(257, 188\)"):
        build_encoder("pretrained_conformer", (257, 188), cfg, modality="audio")  # a spectrogram


# ------------------------------------------------ the paper's Conformer models, end to end
#: the checked-in configs at toy widths: 8-wide, one block, 4-clip batches, one epoch
TINY = ["model.feature_dim=8", "model.hidden=4", "model.layers=1", "data.batch_size=4", "trainer.max_epochs=1",
        "trainer.progress=false", "trainer.patience=0", "method.num_permutations=4"]


def _train(dataset, root, out, *extra):
    from mmbalance.cli import main

    config = CONFIGS / dataset / "conformer" / "mcr.yaml"
    rc = main(["train", "--data", dataset, "--method", "mcr", "--config", str(config), "--set",
               f"data.root={root}", *TINY, *extra, "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and 0 <= metrics["test"]["accuracy"] <= 1
    return metrics, torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_cremad_conformer_config_trains_on_fixtures(tmp_path, backbones, monkeypatch):
    """wav2vec2 -> Conformer on waveforms, face features -> Conformer, as configs/cremad/conformer/mcr.yaml."""
    from mmbalance.testing.fixtures import write_cremad, write_cremad_faces

    monkeypatch.setenv("MMBALANCE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "cremad"
    write_cremad_faces(root, write_cremad(root, frames=1), dim=12)
    metrics, ckpt = _train("cremad", root, tmp_path / "run", f"model.pretrained=audio={backbones['audio']}",
                           "data.audio_seconds=0.25")
    assert metrics["config"]["model"]["encoder"] == "audio:pretrained_conformer,video:conformer"
    assert metrics["config"]["method"]["ceb_weight"] == 1.0 and metrics["config"]["data"]["features"] is True
    keys = ckpt["state_dict"]
    assert any(".encoders.audio.backbone." in k for k in keys)
    assert any(".encoders.audio.conformer.blocks.0.conv.batch_norm.running_var" in k for k in keys)
    assert any(".encoders.video.blocks.0.attn.u_bias" in k for k in keys)


def test_ave_conformer_config_trains_on_fixtures(tmp_path, backbones, monkeypatch):
    """HuBERT -> Conformer on the 16 kHz waveforms of Audios/<VideoID>.wav, ViViT -> Conformer on
    2-frame clips, as configs/ave/conformer/mcr.yaml (unimodal stages first)."""
    from mmbalance.testing.fixtures import write_ave

    monkeypatch.setenv("MMBALANCE_CACHE_DIR", str(tmp_path / "cache"))
    write_ave(tmp_path / "ave", frames=2, wavs=True, wav_seconds=0.25, spectrograms=False)
    metrics, ckpt = _train("ave", tmp_path / "ave", tmp_path / "run",
                           f"model.pretrained=audio={backbones['hubert']},video={backbones['video']}",
                           "data.num_frames=2", "data.image_size=16", "data.audio_seconds=0.25")
    config = metrics["config"]
    assert config["model"]["encoder"] == "audio:pretrained_conformer,video:pretrained_conformer"
    assert config["data"]["audio_input"] == "waveform" and config["method"]["init"] == "unimodal"
    keys = ckpt["state_dict"]
    assert any(".encoders.audio.backbone.backbone.feature_extractor." in k for k in keys)
    assert any(".encoders.audio.conformer.blocks.0.attn.v_bias" in k for k in keys)
    assert any(".encoders.video.conformer.blocks.0.attn.v_bias" in k for k in keys)
