"""Pretrained backbones (wav2vec2, HuBERT, ViT, Swin, ViViT, ...) from a local Hugging Face
directory, through the optional ``transformers`` extra (``pip install 'mmbalance[pretrained]'``).

Nothing is fetched: the directory the user gives (``model.pretrained``) must hold the model's
``config.json`` and weights, as ``save_pretrained`` writes them; loading uses
``local_files_only=True``. The paper's advanced encoders (Appendix A.3) are such backbones:
wav2vec2 on CREMA-D waveforms (``data.audio_input=waveform``), HuBERT and ViViT on AVE, Swin on
Something-Something.

Choose it per modality: ``--set model.encoder=audio:pretrained model.pretrained=audio=DIR``
(or one ``DIR`` for every modality whose encoder is ``pretrained``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

from torch import Tensor, nn

from ..errors import ConfigError


class PretrainedEncoder(nn.Module):
    """A Hugging Face backbone, its token outputs averaged into one (B, hidden) feature.

    Inputs by the backbone's ``main_input_name``:

    - ``input_values`` (audio models): (B, L) or (B, 1, L) waveforms;
    - ``pixel_values``: (B, C, H, W) images; (B, C, T, H, W) clips go frame by frame through
      image models (averaged over time, like :class:`ResNet18Video`) and whole into video models
      (those whose config has ``num_frames``, e.g. ViViT, which take (B, T, C, H, W)).

    Args:
        path: local directory written by ``save_pretrained``.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.pretrained: {path} holds no config.json (expected a local Hugging Face "
                              "model directory, as save_pretrained writes it)")
        try:
            from transformers import AutoModel
        except ImportError:
            raise ConfigError("the pretrained encoder needs transformers: pip install 'mmbalance[pretrained]'") from None
        self.backbone = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.backbone.train()  # from_pretrained returns eval mode; the training loop decides
        self.input_name = self.backbone.main_input_name
        self.video_model = hasattr(self.backbone.config, "num_frames")
        self.out_dim = int(self.backbone.config.hidden_size)

    def _tokens(self, x: Tensor) -> Tensor:
        hidden = self.backbone(**{self.input_name: x}).last_hidden_state
        return hidden if hidden.dim() == 3 else hidden.flatten(2).transpose(1, 2)  # (B, C, H, W) maps

    def sequence(self, x: Tensor) -> Tensor:
        """The backbone's output before averaging, (B, S, hidden): audio frames, image or clip
        tokens (a convolutional map's positions), or one averaged token per frame of a clip
        that goes frame by frame through an image model. What a Conformer on top reads."""
        if self.input_name == "input_values":
            return self._tokens(x.reshape(x.shape[0], -1))
        if x.dim() == 5 and self.video_model:
            return self._tokens(x.transpose(1, 2))
        if x.dim() == 5:
            b, c, t, h, w = x.shape
            return self._tokens(x.transpose(1, 2).reshape(b * t, c, h, w)).mean(1).reshape(b, t, -1)
        return self._tokens(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L), (B, C, H, W) or (B, C, T, H, W) -> (B, hidden), the mean of :meth:`sequence`."""
        return self.sequence(x).mean(1)


def pretrained_dir(spec: Optional[str], modality: Optional[str]) -> str:
    """The directory ``model.pretrained`` gives for ``modality`` (``DIR`` or ``m=DIR,m=DIR``)."""
    if not spec:
        raise ConfigError("encoder 'pretrained' needs --set model.pretrained=DIR (or MODALITY=DIR,...)")
    if "=" not in spec:
        return spec
    dirs = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    dirs = {k.strip(): v.strip() for k, v in dirs.items()}
    if modality not in dirs:
        raise ConfigError(f"model.pretrained names no directory for modality {modality!r} (it names {', '.join(dirs)})")
    return dirs[modality]


def pretrained(shape: Tuple[int, ...], cfg: Any, modality: Optional[str] = None) -> nn.Module:
    """Registry factory: the backbone in ``model.pretrained`` for ``modality``."""
    return PretrainedEncoder(pretrained_dir(getattr(cfg, "pretrained", None), modality))


pretrained.wants_modality = True  # build_encoder passes the modality's name
