"""Video Swin encoder: sizes against torchvision's published Swin3D-T count, the relative
position index and the shifted-window mask against brute-force loops, shapes, gradient flow,
and loading a checkpoint written here in the official layout (every key name and shape below
is spelled out from the official Video-Swin-Transformer code, not taken from our module)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from mmbalance.config import ModelConfig
from mmbalance.errors import ConfigError, DataError
from mmbalance.models import build_encoder
from mmbalance.models.swin import (MASKED, SwinTransformer3D, load_swin_checkpoint, relative_position_index,
                                   shifted_window_mask, window_partition)

TINY = dict(embed_dim=6, depths=(2, 2), heads=(3, 6), window=(2, 3, 3), patch=(2, 4, 4))


def tiny(in_chans=3, drop_path=0.0, **kw):
    torch.manual_seed(0)
    return SwinTransformer3D(in_chans=in_chans, drop_path=drop_path, **{**TINY, **kw})


def index_by_hand(window, table=None):
    """Official table row of each token pair: offsets shifted to start at 0, mixed radix."""
    t = table or window
    coords = list(itertools.product(*(range(n) for n in window)))  # (d, h, w) raster order
    out = torch.empty(len(coords), len(coords), dtype=torch.long)
    for a, ca in enumerate(coords):
        for b, cb in enumerate(coords):
            dd, dh, dw = (x - y + n - 1 for x, y, n in zip(ca, cb, t))
            out[a, b] = dd * (2 * t[1] - 1) * (2 * t[2] - 1) + dh * (2 * t[2] - 1) + dw
    return out


def official_state(embed_dim, depths, heads, window, patch, in_chans=3, classes=400, index=True):
    """A checkpoint as mmaction's Recognizer3D saves Video Swin: 'backbone.' + the backbone's
    names, the buffers ``relative_position_index`` included, and the I3D head 'cls_head.fc_cls'."""
    g = torch.Generator().manual_seed(1)
    state = {}

    def put(name, *shape):
        state["backbone." + name] = torch.randn(*shape, generator=g)

    put("patch_embed.proj.weight", embed_dim, in_chans, *patch)
    put("patch_embed.proj.bias", embed_dim)
    put("patch_embed.norm.weight", embed_dim)
    put("patch_embed.norm.bias", embed_dim)
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    rel = index_by_hand(window)
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c = embed_dim * 2 ** i
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            for name, shape in [("norm1.weight", (c,)), ("norm1.bias", (c,)), ("attn.relative_position_bias_table", (rows, h)),
                                ("attn.qkv.weight", (3 * c, c)), ("attn.qkv.bias", (3 * c,)), ("attn.proj.weight", (c, c)),
                                ("attn.proj.bias", (c,)), ("norm2.weight", (c,)), ("norm2.bias", (c,)),
                                ("mlp.fc1.weight", (4 * c, c)), ("mlp.fc1.bias", (4 * c,)), ("mlp.fc2.weight", (c, 4 * c)),
                                ("mlp.fc2.bias", (c,))]:
                put(b + name, *shape)
            if index:
                state["backbone." + b + "attn.relative_position_index"] = rel.clone()
        if i < len(depths) - 1:
            put(f"layers.{i}.downsample.reduction.weight", 2 * c, 4 * c)  # Linear(4C, 2C, bias=False)
            put(f"layers.{i}.downsample.norm.weight", 4 * c)
            put(f"layers.{i}.downsample.norm.bias", 4 * c)
    last = embed_dim * 2 ** (len(depths) - 1)
    put("norm.weight", last)
    put("norm.bias", last)
    state["cls_head.fc_cls.weight"] = torch.randn(classes, last, generator=g)
    state["cls_head.fc_cls.bias"] = torch.randn(classes, generator=g)
    return state


def save(tmp_path, state, name="swin.pth"):
    path = tmp_path / name
    torch.save({"meta": {"epoch": 30, "note": "official layout"}, "state_dict": state}, path)
    return path


def test_swin_t_sizes_match_the_published_count():
    model = SwinTransformer3D()  # Swin-T defaults
    head = 768 * 400 + 400  # torchvision's Swin3D_T_Weights.KINETICS400_V1 num_params counts its 400-class head
    assert model.out_dim == 768
    assert sum(p.numel() for p in model.parameters()) + head == 28_158_070


def test_relative_position_index_by_hand():
    assert torch.equal(relative_position_index((2, 3, 3)), index_by_hand((2, 3, 3)))
    # a window shrunk to a small map keeps the full window's table rows for its offsets
    assert torch.equal(relative_position_index((1, 2, 3), (2, 3, 3)), index_by_hand((1, 2, 3), (2, 3, 3)))


@pytest.mark.parametrize("size, window, shift", [((4, 6, 6), (2, 3, 3), (1, 1, 1)), ((4, 4, 6), (2, 2, 3), (1, 1, 1)),
                                                 ((2, 6, 9), (2, 3, 3), (0, 1, 1)), ((6, 4, 3), (3, 2, 3), (1, 1, 0))])
def test_shifted_window_mask_against_brute_force(size, window, shift):
    mask = shifted_window_mask(size, window, shift, torch.device("cpu"))
    # token at rolled position p came from (p + shift) mod size; two tokens of one rolled window
    # may attend iff no axis wrapped between them: their original offset equals the rolled one
    pos = torch.stack(torch.meshgrid(*(torch.arange(s) for s in size), indexing="ij"), -1)  # (D, H, W, 3)
    pos = window_partition(pos[None], window)  # (nW, N, 3): the order the mask's rows use
    want = torch.zeros_like(mask)
    for n in range(pos.shape[0]):
        for a, b in itertools.product(range(pos.shape[1]), repeat=2):
            pa, pb = pos[n, a].tolist(), pos[n, b].tolist()
            assert all(x // w == y // w for x, y, w in zip(pa, pb, window))  # the same window
            oa = [(x + s) % S for x, s, S in zip(pa, shift, size)]
            ob = [(x + s) % S for x, s, S in zip(pb, shift, size)]
            together = all(x - y == u - v for x, y, u, v in zip(oa, ob, pa, pb))
            want[n, a, b] = 0.0 if together else MASKED
    assert torch.equal(mask, want)


def test_a_shifted_block_sees_only_its_window_region():
    # d(attention output at token q) / d(input): nonzero exactly on q's region in the original
    # volume. Masked pairs keep a weight of exp(-100) ~ 4e-44 (the official fill), so gradients
    # through them are ~1e-44 times those of live pairs (>= 1e-8 here, float64): threshold 1e-20.
    block = tiny().layers[0].blocks[1].double()  # shifted: window (2, 3, 3), shift (1, 1, 1)
    x = torch.randn(1, 4, 6, 6, 6, dtype=torch.float64, requires_grad=True)
    q = (3, 5, 0)  # a corner token, in a window that wraps along every axis
    block._attend(x)[0, q[0], q[1], q[2]].sum().backward()
    seen = {tuple(i) for i in (x.grad[0].abs().sum(-1) > 1e-20).nonzero().tolist()}
    rolled = [(c - s) % n for c, s, n in zip(q, (1, 1, 1), (4, 6, 6))]
    want = set()
    for o in itertools.product(range(4), range(6), range(6)):
        p = [(c - s) % n for c, s, n in zip(o, (1, 1, 1), (4, 6, 6))]
        same_window = all(a // w == b // w for a, b, w in zip(p, rolled, (2, 3, 3)))
        if same_window and all(a - b == u - v for a, b, u, v in zip(o, q, p, rolled)):
            want.add(o)
    # q = (3, 5, 0) rolls to (2, 4, 5); its window there holds original d {3, 0}, h {4, 5, 0},
    # w {4, 5, 0}, of which only d 3, h 4-5 and w 0 were q's neighbours
    assert seen == want == {(3, 4, 0), (3, 5, 0)}


def test_shapes():
    model = tiny().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 24, 24)).shape == (2, 12)
        assert model.feature_maps(torch.randn(2, 3, 8, 24, 24)).shape == (2, 4, 3, 3, 12)
        # odd sizes are padded: T 5 -> 3 patches, H 30 -> 8, W 26 -> 7; merging: 8 x 7 -> 4 x 4
        assert model.feature_maps(torch.randn(1, 3, 5, 30, 26)).shape == (1, 3, 4, 4, 12)
        assert model(torch.randn(2, 3, 24, 24)).shape == (2, 12)  # an image is a one-frame clip
        assert tiny(in_chans=2).eval()(torch.randn(2, 2, 4, 16, 16)).shape == (2, 12)


def test_gradient_reaches_every_parameter():
    model = tiny()
    # 8 x 24 x 24 -> 4 x 6 x 6 tokens, then 4 x 3 x 3: windows fit and every relative offset
    # (every bias table row) occurs in every block
    out = model(torch.randn(2, 3, 8, 24, 24))
    (out * torch.randn_like(out)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name, g in grads.items():
        if name.endswith("qkv.bias"):
            # the key bias adds q.b_k to every score of a query alike; softmax ignores that, so
            # its gradient is zero in exact arithmetic (float32 leaves ~1e-10, against >= 1e-6
            # for the query and value biases here): it must stay a parameter of the official layout
            c = len(g) // 3
            assert g[c:2 * c].abs().max() < 1e-8 and g[:c].abs().gt(0).all() and g[2 * c:].abs().gt(0).all(), name
        else:
            assert g is not None and g.abs().gt(0).all(), name


def test_stochastic_depth_in_training_only():
    model = tiny(drop_path=0.5)
    x = torch.randn(4, 3, 4, 12, 12)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    assert not torch.allclose(a, model(x))


def test_official_checkpoint_loads_every_parameter(tmp_path):
    state = official_state(**TINY)
    model = tiny()
    load_swin_checkpoint(model, str(save(tmp_path, state)))
    for name, p in model.named_parameters():
        assert torch.equal(p, state["backbone." + name]), name
    backbone = [k for k in state if k.startswith("backbone.") and not k.endswith("relative_position_index")]
    assert len(backbone) == len(dict(model.named_parameters()))  # no file tensor left unused


def test_a_plain_state_dict_without_prefix_loads(tmp_path):
    state = {k[len("backbone."):]: v for k, v in official_state(**TINY, index=False).items() if k.startswith("backbone.")}
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    model = tiny()
    load_swin_checkpoint(model, str(path))
    assert torch.equal(model.norm.weight, state["norm.weight"])


def test_missing_and_unexpected_keys_are_one_error(tmp_path):
    state = official_state(**TINY)
    del state["backbone.layers.0.blocks.1.mlp.fc2.bias"]
    with pytest.raises(DataError, match=r"1 missing keys \(first 'layers.0.blocks.1.mlp.fc2.bias'\), 0 unexpected"):
        load_swin_checkpoint(tiny(), str(save(tmp_path, state)))
    state = official_state(**TINY)
    state["backbone.layers.2.blocks.0.norm1.weight"] = torch.ones(24)
    with pytest.raises(DataError, match=r"0 missing keys, 1 unexpected \(first 'layers.2.blocks.0.norm1.weight'\)"):
        load_swin_checkpoint(tiny(), str(save(tmp_path, state)))


def test_another_window_or_width_is_refused(tmp_path):
    other = {**TINY, "window": (2, 5, 5)}
    with pytest.raises(DataError, match=r"relative_position_index was made for another window than this encoder's \(2, 3, 3\)"):
        load_swin_checkpoint(tiny(), str(save(tmp_path, official_state(**other))))
    with pytest.raises(DataError, match=r"relative_position_bias_table has shape \(243, 3\), the encoder's is \(75, 3\) "
                                        r"\(4 such keys; the bias table of window \(2, 3, 3\)"):
        load_swin_checkpoint(tiny(), str(save(tmp_path, official_state(**other, index=False))))
    with pytest.raises(DataError, match=r"model.base_width must be 64"):
        load_swin_checkpoint(tiny(), str(save(tmp_path, official_state(**{**TINY, "embed_dim": 12}, index=False))))


def test_flow_with_two_channels_gets_the_averaged_rgb_kernel(tmp_path):
    state = official_state(**TINY)
    model = tiny(in_chans=2)
    load_swin_checkpoint(model, str(save(tmp_path, state)))
    rgb = state["backbone.patch_embed.proj.weight"]
    assert torch.allclose(model.patch_embed.proj.weight, rgb.mean(1, keepdim=True).expand(-1, 2, -1, -1, -1))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_unreadable_or_crafted_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="swin.pth does not exist"):
        load_swin_checkpoint(tiny(), str(tmp_path / "swin.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth is not a readable weights-only torch file"):
        load_swin_checkpoint(tiny(), str(tmp_path / "junk.pth"))
    marker = tmp_path / "ran"
    torch.save({"state_dict": official_state(**TINY), "x": _Payload(str(marker))}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match=r"bad.pth is not a readable weights-only torch file \(it asks for posix.mkdir"):
        load_swin_checkpoint(tiny(), str(tmp_path / "bad.pth"))
    assert not marker.exists()
    torch.save({"state_dict": {"a": "text"}}, tmp_path / "odd.pth")
    with pytest.raises(DataError, match=r"expected \{'state_dict': \{name: tensor\}\}"):
        load_swin_checkpoint(tiny(), str(tmp_path / "odd.pth"))


def test_registry_factory_widths_and_checkpoint_per_modality(tmp_path):
    enc = build_encoder("swin3d", (3, 4, 16, 16), ModelConfig(base_width=4), modality="video")
    assert enc.out_dim == 48 and enc.config["window"] == (8, 7, 7) and enc.config["embed_dim"] == 6
    assert enc(torch.randn(2, 3, 4, 16, 16)).shape == (2, 48)
    with pytest.raises(ConfigError, match="even width"):
        build_encoder("swin3d", (3, 4, 16, 16), ModelConfig(base_width=5))
    # Swin-T's depths, heads and window at width 6: the official layout, loaded by name
    path = save(tmp_path, official_state(6, (2, 2, 6, 2), (3, 6, 12, 24), (8, 7, 7), (2, 4, 4)))
    cfg = ModelConfig(base_width=4, pretrained=f"video={path},flow={path}")
    enc = build_encoder("swin3d", (3, 4, 16, 16), cfg, modality="flow")
    assert torch.equal(enc.layers[2].blocks[5].mlp.fc2.bias, torch.load(path, weights_only=True)["state_dict"]["backbone.layers.2.blocks.5.mlp.fc2.bias"])
    with pytest.raises(ConfigError, match="names no directory for modality 'audio'"):
        build_encoder("swin3d", (3, 4, 16, 16), cfg, modality="audio")
