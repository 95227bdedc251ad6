"""Intermediate fusion: ResNet-18 run stage by stage gives its own forward, and
MultimodalModel runs a module between stages that sees every modality."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmbalance import ConfigError
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.models.multimodal import stagewise
from mmbalance.models.resnet import ResNet18Audio, ResNet18Video


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors run fastest on one thread."""


def _stagewise_features(encoder, x):
    h = encoder.stage_input(x)
    shapes = {}
    for name in encoder.stages:
        h = encoder.stage(name, h)
        shapes[name] = tuple(h.shape)
    return encoder.readout(h), shapes


@pytest.mark.parametrize("encoder,x", [
    (ResNet18Audio(width=4), torch.randn(2, 20, 24)),  # (B, F, T) spectrogram
    (ResNet18Video(in_channels=3, width=4), torch.randn(2, 3, 3, 16, 16)),  # (B, C, T, H, W) frames
    (ResNet18Video(in_channels=1, width=4), torch.randn(2, 1, 16, 16)),  # one image per sample
])
def test_resnet_stage_by_stage_equals_its_forward(encoder, x):
    torch.manual_seed(0)
    encoder.eval()
    features, shapes = _stagewise_features(encoder, x)
    torch.testing.assert_close(features, encoder(x), rtol=1e-5, atol=1e-6)
    assert stagewise(encoder) and list(shapes) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    for name, shape in shapes.items():  # (B, C, ...): sample axis first, channels second
        assert shape[0] == 2 and shape[1] == encoder.stage_channels[name]
        assert len(shape) == x.dim() + (1 if isinstance(encoder, ResNet18Audio) and x.dim() == 3 else 0)


class Recorder(nn.Module):
    """A stage fusion that records what it sees and adds the other modality's channel mean."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, stage, maps):
        self.seen.append((stage, {m: tuple(h.shape) for m, h in maps.items()}))
        means = {m: h.flatten(2).mean(-1) for m, h in maps.items()}
        return {m: h + means[o].mean(1).reshape(-1, *(1,) * (h.dim() - 1))
                for (m, h), o in zip(maps.items(), reversed(list(maps)))}


def test_model_runs_encoders_stage_by_stage_with_the_fusion_between_stages():
    torch.manual_seed(0)
    encoders = {"a": ResNet18Audio(width=4), "v": ResNet18Video(width=4)}
    model = MultimodalModel(encoders, 3).eval()
    x = {"a": torch.randn(2, 12, 12), "v": torch.randn(2, 3, 2, 12, 12)}
    late = model(x)
    identity = lambda stage, maps: maps  # noqa: E731
    model.set_stage_fusion(type("Identity", (nn.Module,), {"forward": lambda self, s, m: identity(s, m)})())
    torch.testing.assert_close(model(x).logits, late.logits, rtol=1e-5, atol=1e-6)
    recorder = Recorder()
    model.set_stage_fusion(recorder)
    out = model(x)
    assert [s for s, _ in recorder.seen] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert all(set(shapes) == {"a", "v"} for _, shapes in recorder.seen)
    # the same computation written out: each stage, then the cross-modal shift, then readout
    h = {m: encoders[m].stage_input(x[m]) for m in x}
    for name in encoders["a"].stages:
        h = {m: encoders[m].stage(name, h[m]) for m in h}
        shift = {m: hh.flatten(2).mean(-1).mean(1) for m, hh in h.items()}
        h = {"a": h["a"] + shift["v"].reshape(-1, 1, 1, 1), "v": h["v"] + shift["a"].reshape(-1, 1, 1, 1, 1)}
    for m in x:
        torch.testing.assert_close(out.features[m], encoders[m].readout(h[m]), rtol=1e-5, atol=1e-6)
    assert dict(model.named_children())["stage_fusion"] is recorder  # in the state dict and .to(device)
    model.set_stage_fusion(None)  # late fusion again
    torch.testing.assert_close(model(x).logits, late.logits, rtol=1e-5, atol=1e-6)


def test_stage_fusion_on_encoders_without_stages_is_one_clear_error():
    model = MultimodalModel({"a": MLPEncoder(4, 3), "v": ResNet18Video(width=4)}, 2)
    with pytest.raises(ConfigError, match=r"intermediate fusion needs encoders that expose their stages .*a \(MLPEncoder\)"):
        model.set_stage_fusion(Recorder())
    assert model.stage_fusion is None


def test_an_encoders_forward_hooks_see_its_input_and_feature_on_the_stage_path():
    torch.manual_seed(0)
    model = MultimodalModel({"a": ResNet18Audio(width=4), "v": ResNet18Video(width=4)}, 3).eval()
    model.set_stage_fusion(Recorder())
    x = {"a": torch.randn(2, 12, 12), "v": torch.randn(2, 3, 2, 12, 12)}
    seen = []
    handle = model.encoders["v"].register_forward_hook(lambda mod, args, out: seen.append((args[0], out.clone())))
    before = model(x).features["v"]
    assert len(seen) == 1 and seen[0][0] is x["v"]
    torch.testing.assert_close(seen[0][1], before)
    handle.remove()
    model.encoders["v"].register_forward_hook(lambda mod, args, out: torch.zeros_like(out))  # edits the output
    assert float(model(x).features["v"].abs().sum()) == 0
