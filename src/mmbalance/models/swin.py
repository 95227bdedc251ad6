"""Video Swin Transformer (Liu et al., "Video Swin Transformer", CVPR 2022), the paper's
Something-Something backbone for video and optical flow (Appendix A.3, after Radevski et al.).

Swin-T, as the MCR authors build it (``models/SthSth_models.py`` ``SwinModel``): patch
(2, 4, 4), embedding 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window (8, 7, 7), MLP
ratio 4, qkv bias, stochastic depth 0.2 (linear over the 12 blocks), LayerNorm after the patch
embedding; the final LayerNorm's (B, 768, T/2, H/32, W/32) map averaged over time and space is
the feature. Both modalities take 3-channel frames: Something-Something flow is stored as RGB
JPEGs and goes through the RGB patch embedding unchanged (the authors load the Kinetics
checkpoint strictly into both encoders).

Module and parameter names are the official ones (``patch_embed.proj``,
``layers.0.blocks.1.attn.relative_position_bias_table``, ``layers.0.downsample.reduction``,
``norm``), so the official Kinetics-400 file ``swin_tiny_patch244_window877_kinetics400_1k.pth``
loads with :func:`load_swin_checkpoint` (``model.pretrained=PATH``).

Two departures from the official code, neither visible at the authors' 16 x 224 x 224 clips:
where a feature map is smaller than the window (the window shrinks to the map, as officially),
the relative position index is that of the shrunk window (the official code slices the first
N rows and columns of the full window's index, which pairs tokens with other offsets' biases);
and the attention mask is built from per-axis region labels in one vectorised pass.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from .pretrained import pretrained_dir

Triple = Tuple[int, int, int]
#: the MCR authors' Swin-T (models/SthSth_models.py) and the Kinetics-400 file's window
SWIN_T = dict(patch=(2, 4, 4), embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=(8, 7, 7),
              drop_path=0.2)
MASKED = -100.0  # the official fill: exp(-100) ~ 4e-44 is a zero weight after softmax, and finite in fp16


def effective_window(size: Sequence[int], window: Triple, shift: Triple) -> Tuple[Triple, Triple]:
    """The official rule: along an axis no longer than the window, the window is the whole
    axis and there is no shift."""
    w = tuple(s if s <= wi else wi for s, wi in zip(size, window))
    sh = tuple(0 if s <= wi else si for s, wi, si in zip(size, window, shift))
    return w, sh  # type: ignore[return-value]


def window_partition(x: Tensor, w: Triple) -> Tensor:
    """(B, D, H, W, C) -> (B * nW, w0*w1*w2, C), windows in (d, h, w) raster order."""
    b, d, h, wd, c = x.shape
    x = x.view(b, d // w[0], w[0], h // w[1], w[1], wd // w[2], w[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w[0] * w[1] * w[2], c)


def window_reverse(windows: Tensor, w: Triple, b: int, d: int, h: int, wd: int) -> Tensor:
    """Inverse of :func:`window_partition`: -> (B, D, H, W, C)."""
    x = windows.view(b, d // w[0], h // w[1], wd // w[2], w[0], w[1], w[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, wd, -1)


@functools.lru_cache(maxsize=64)
def relative_position_index(window: Triple, table_window: Optional[Triple] = None) -> Tensor:
    """(N, N) rows of the bias table for every token pair of a ``window`` (N = its volume).

    Row of offset (dd, dh, dw) = coordinates of i minus those of j:
    ``(dd + Wd-1)(2Wh-1)(2Ww-1) + (dh + Wh-1)(2Ww-1) + (dw + Ww-1)`` with the table's window
    (W = ``table_window``, default ``window``): the official layout of the table. Cached: callers
    must not modify the result in place.
    """
    tw = table_window or window
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in window), indexing="ij")).flatten(1)
    rel = (grid[:, :, None] - grid[:, None, :]).permute(1, 2, 0)  # (N, N, 3)
    rel = rel + torch.tensor([tw[0] - 1, tw[1] - 1, tw[2] - 1])
    return rel[..., 0] * (2 * tw[1] - 1) * (2 * tw[2] - 1) + rel[..., 1] * (2 * tw[2] - 1) + rel[..., 2]


@functools.lru_cache(maxsize=64)
def shifted_window_mask(size: Triple, window: Triple, shift: Triple, device: torch.device) -> Tensor:
    """(nW, N, N) additive mask of the shifted windows: 0 where two tokens of a window were
    neighbours before the cyclic shift, :data:`MASKED` where the shift brought them together.

    ``size`` is the padded map (multiples of ``window``). After rolling by ``-shift``, each axis
    has three regions, ``[0, S-w)``, ``[S-w, S-s)`` and ``[S-s, S)`` (the wrapped tokens); two
    tokens may attend when they share the region on every axis.
    """
    labels = []
    for s, w, sh in zip(size, window, shift):
        pos = torch.arange(s, device=device)
        labels.append((pos >= s - w).long() + (pos >= s - sh).long() if sh else torch.zeros(s, dtype=torch.long,
                                                                                              device=device))
    region = labels[0][:, None, None] * 9 + labels[1][None, :, None] * 3 + labels[2][None, None, :]
    region = window_partition(region[None, ..., None], window).squeeze(-1)  # (nW, N)
    differ = region[:, :, None] != region[:, None, :]
    return torch.zeros(differ.shape, device=device).masked_fill_(differ, MASKED)


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3-D windows with a learned relative position bias
    (``relative_position_bias_table``: one row per relative offset, one column per head)."""

    def __init__(self, dim: int, window: Triple, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"Swin: width {dim} is not divisible by {heads} heads")
        self.window, self.heads, self.scale = tuple(window), heads, (dim // heads) ** -0.5
        rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, heads))
        # derived from the window, so not saved: a checkpoint's copy is checked, never used
        self.register_buffer("relative_position_index", relative_position_index(self.window).clone(),
                             persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _index(self, window: Triple) -> Tensor:
        if window == self.window:
            return self.relative_position_index
        return relative_position_index(window, self.window).to(self.relative_position_index.device)

    def forward(self, x: Tensor, window: Triple, mask: Optional[Tensor] = None) -> Tensor:
        """(B * nW, N, C) tokens of windows of shape ``window``; ``mask`` (nW, N, N) or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*nW, heads, N, N)
        bias = self.relative_position_bias_table[self._index(window).reshape(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None].to(attn.dtype)).view(-1, self.heads, n, n)
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class DropPath(nn.Module):
    """Stochastic depth: zeroes a residual branch for a random subset of samples in training,
    scaling the kept ones by 1 / keep (Huang et al. 2016)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (the official names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock3D(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each a residual branch with stochastic depth."""

    def __init__(self, dim: int, heads: int, window: Triple, shift: Triple, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.window, self.shift = tuple(window), tuple(shift)
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention3D(dim, self.window, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def _attend(self, x: Tensor) -> Tensor:
        b, d, h, w, c = x.shape
        window, shift = effective_window((d, h, w), self.window, self.shift)
        pad = [(wi - s % wi) % wi for s, wi in zip((d, h, w), window)]
        x = F.pad(self.norm1(x), (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))  # zero tokens, after the norm
        size = tuple(x.shape[1:4])
        shifted = any(shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        mask = shifted_window_mask(size, window, shift, x.device) if shifted else None
        out = self.attn(window_partition(x, window), window, mask)
        x = window_reverse(out, window, b, *size)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w].contiguous()

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, H, W, C) -> same shape."""
        x = x + self.drop_path(self._attend(x))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenates each 2 x 2 spatial neighbourhood (time untouched), LayerNorm, and a linear
    map 4C -> 2C without bias. Odd sides are zero-padded."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, H, W, C) -> (B, D, ceil(H/2), ceil(W/2), 2C)."""
        h, w = x.shape[2:4]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: blocks alternating regular and shifted windows (shift = window // 2), then
    patch merging (except in the last stage)."""

    def __init__(self, dim: int, depth: int, heads: int, window: Triple, drop_paths: Sequence[float],
                 downsample: bool, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        shift = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList(SwinBlock3D(dim, heads, window, (0, 0, 0) if i % 2 == 0 else shift, mlp_ratio,
                                                drop_paths[i]) for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3-D patches: a Conv3d with kernel = stride = ``patch`` (input zero-padded
    to multiples of it), then LayerNorm over channels."""

    def __init__(self, patch: Triple, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.proj, self.norm = nn.Conv3d(in_chans, dim, kernel_size=patch, stride=patch), nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, T', H', W', dim)."""
        pad = [(p - s % p) % p for s, p in zip(x.shape[2:], self.patch)]
        x = self.proj(F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0])))
        return self.norm(x.permute(0, 2, 3, 4, 1))


class SwinTransformer3D(nn.Module):
    """Video Swin Transformer: (B, C, T, H, W) clips -> (B, 8 * embed_dim) features.

    Args:
        in_chans: input channels (3: RGB frames, and the RGB-encoded flow of Sth-Sth).
        embed_dim, depths, heads, window, patch: the architecture (Swin-T by default).
        drop_path: stochastic depth of the last block (0 for the first, linear in between).
        mlp_ratio: MLP width over the block width.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 heads: Sequence[int] = (3, 6, 12, 24), window: Triple = (8, 7, 7), patch: Triple = (2, 4, 4),
                 drop_path: float = 0.2, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if len(depths) != len(heads):
            raise ConfigError(f"Swin: {len(depths)} stage depths but {len(heads)} head counts")
        self.config = dict(in_chans=in_chans, embed_dim=embed_dim, depths=tuple(depths), heads=tuple(heads),
                           window=tuple(window), patch=tuple(patch))
        self.patch_embed = PatchEmbed3D(tuple(patch), in_chans, embed_dim)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, h) in enumerate(zip(depths, heads)):
            first = sum(depths[:i])
            self.layers.append(BasicLayer(embed_dim * 2 ** i, depth, h, tuple(window), rates[first:first + depth],
                                          downsample=i < len(depths) - 1, mlp_ratio=mlp_ratio))
        self.out_dim = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.out_dim)
        self.apply(_init)

    def feature_maps(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, T', H', W', out_dim) after the final norm."""
        x = self.patch_embed(x.unsqueeze(2) if x.dim() == 4 else x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, out_dim), averaged over time and space (the authors' pooling); a
        (B, C, H, W) image is a one-frame clip."""
        return self.feature_maps(x).mean(dim=(1, 2, 3))


def _init(m: nn.Module) -> None:
    # the official init: truncated normal linear weights, zero biases, unit LayerNorms (the
    # Conv3d keeps PyTorch's default)
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _read_state(path: str) -> Dict[str, Tensor]:
    """The tensors of a checkpoint file, read weights-only (it may come from anywhere)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"Swin checkpoint {path} does not exist (expected the official Video Swin file, e.g. "
                        "swin_tiny_patch244_window877_kinetics400_1k.pth)") from None
    except Exception as exc:  # torch.load raises many types; a refused global is one of them
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        why = f"it asks for {refused.group(1)}; refused without running it" if refused else (
            str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"Swin checkpoint {path} is not a readable weights-only torch file ({why})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"Swin checkpoint {path}: expected {{'state_dict': {{name: tensor}}}} (the official layout) "
                        "or a plain {name: tensor} dict")
    return state


def _backbone_keys(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Official names -> ours: 'backbone.' dropped, the Kinetics classifier ('cls_head.') left out."""
    return {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()
            if not k.startswith("cls_head.")}


def load_swin_checkpoint(model: SwinTransformer3D, path: str) -> None:
    """Loads the official Video Swin checkpoint layout into ``model``, every parameter from the file.

    The file holds ``{'state_dict': {'backbone.patch_embed.proj.weight': ..., ...,
    'cls_head.fc_cls.weight': ...}}`` (mmaction's Recognizer3D). The Kinetics classifier is left
    out; each ``relative_position_index`` in the file must equal the one this window gives (it
    is derived, not learned). Anything else must match name for name and shape for shape, as
    the authors' strict ``load_state_dict`` requires; in particular a bias table of another
    window is refused (the authors do not interpolate 3-D checkpoints). One exception: a
    3-channel patch embedding loaded into an encoder of C != 3 input channels gets the RGB
    kernel averaged over its channels, repeated C times (TSN's cross-modality initialization;
    the authors never need it, their flow being RGB-encoded).

    Raises:
        DataError: an unreadable file, missing or unexpected keys, or a shape that differs.
    """
    state, own = _backbone_keys(_read_state(str(path))), model.state_dict()
    for name in [k for k in state if k.endswith("relative_position_index")]:
        try:
            buffer = model.get_buffer(name)
        except AttributeError:  # not a buffer of this network: reported as unexpected below
            continue
        if buffer.shape != state[name].shape or not torch.equal(buffer, state[name].long()):
            raise DataError(f"Swin checkpoint {path}: {name} was made for another window than this encoder's "
                            f"{model.config['window']}")
        del state[name]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise DataError(f"Swin checkpoint {path} does not fit the encoder: {len(missing)} missing keys"
                        f"{' (first ' + repr(missing[0]) + ')' if missing else ''}, {len(unexpected)} unexpected"
                        f"{' (first ' + repr(unexpected[0]) + ')' if unexpected else ''}; expected the official "
                        f"Video Swin names (backbone.patch_embed.proj.weight, ...) of a network {_describe(model)}")
    stem = "patch_embed.proj.weight"
    if state[stem].dim() == 5 and state[stem].shape[1] == 3 and own[stem].shape[1] != 3:
        state[stem] = state[stem].mean(1, keepdim=True).repeat(1, own[stem].shape[1], 1, 1, 1)
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        hint = (f"the bias table of window {model.config['window']} has {own[k].shape[0]} rows; the window must be "
                "the checkpoint's (8, 7, 7 for the Kinetics-400 Swin-T)") if k.endswith("bias_table") else (
                "model.base_width must be 64 to load Swin-T weights")
        raise DataError(f"Swin checkpoint {path}: {k} has shape {tuple(state[k].shape)}, the encoder's is "
                        f"{tuple(own[k].shape)} ({len(wrong)} such keys; {hint})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _describe(model: SwinTransformer3D) -> str:
    c = model.config
    return f"with embed_dim {c['embed_dim']}, depths {c['depths']}, heads {c['heads']}, window {c['window']}"


def swin3d(shape: Tuple[int, ...], cfg: Any, modality: Optional[str] = None) -> nn.Module:
    """Registry factory: Swin-T for (C, T, H, W) clips (the authors' Something-Something encoder).

    ``model.base_width`` scales the width as it scales the ResNets: 64 is Swin-T (embedding 96,
    768-d features); any even width w gives embedding 1.5 w (quick tests). ``model.pretrained``
    (``PATH``, or ``video=PATH,flow=PATH``) names the official checkpoint file to start from
    (the authors start both encoders from the Kinetics-400 Swin-T,
    ``swin_tiny_patch244_window877_kinetics400_1k.pth``); without it the encoder starts random.
    """
    width = int(getattr(cfg, "base_width", 64))
    if width <= 0 or width % 2:
        raise ConfigError(f"model.base_width={width}: the Swin encoder needs an even width (64 is Swin-T)")
    channels = int(shape[0]) if len(shape) in (3, 4) else 3
    model = SwinTransformer3D(in_chans=channels, embed_dim=SWIN_T["embed_dim"] * width // 64,
                              depths=SWIN_T["depths"], heads=SWIN_T["heads"], window=SWIN_T["window"],
                              patch=SWIN_T["patch"], drop_path=SWIN_T["drop_path"])
    spec = getattr(cfg, "pretrained", None)
    if spec:
        load_swin_checkpoint(model, pretrained_dir(spec, modality))
    return model


swin3d.wants_modality = True  # build_encoder passes the modality's name (model.pretrained may name one per modality)
