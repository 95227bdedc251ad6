"""MMTM, the multimodal transfer module, as the Greedy code places it between encoder stages.

Joze et al., "MMTM: Multimodal Transfer Module for CNN Fusion", CVPR 2020; the form here is
the one of Wu et al., ICML 2022 (nyukat/greedy_multimodal_learning ``src/balanced_mmtm.py``
``MMTM_mitigate``): both modalities' maps are averaged to one value per channel, the two
vectors concatenated, squeezed by one shared linear layer and a ReLU, and each modality's
channels rescaled by ``sigmoid`` of its own excitation layer. A running average of each
modality's excitation can replace it ("curation": the modality then receives no
input-dependent signal from the other one).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn


def _mean_over_ranks(value: Tensor) -> Tensor:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


class MMTM(nn.Module):
    """One MMTM for two modalities.

    ``s = ReLU(W_sq [GAP(x_0); GAP(x_1)] + b_sq)``, ``e_k = sigmoid(W_k s + b_k)``,
    output ``x_k * e_k`` (broadcast over every axis after the channel axis).

    Args:
        dims: channels (C_0, C_1) of the two modalities' maps.
        ratio: the squeeze width is ``int(2 (C_0 + C_1) / ratio)`` (balanced_mmtm.py:25-26).
        average_bug: the official code's update of the second modality's running average with
            the FIRST modality's excitation (balanced_mmtm.py:114); needs C_0 == C_1.

    Buffers: ``average_0``, ``average_1`` (C_k,), the running mean of each modality's batch-mean
    excitation over every training forward so far; ``steps``, their count.
    """

    def __init__(self, dims: Sequence[int], ratio: float = 4, average_bug: bool = False) -> None:
        super().__init__()
        if len(dims) != 2:
            raise ValueError(f"MMTM joins two modalities; got channels {list(dims)}")
        if average_bug and dims[0] != dims[1]:
            raise ValueError(f"MMTM average_bug needs equal channels; got {list(dims)}")
        self.dims, self.average_bug = tuple(int(d) for d in dims), average_bug
        hidden = int(2 * sum(self.dims) / ratio)
        self.squeeze = nn.Linear(sum(self.dims), hidden)
        self.excite = nn.ModuleList(nn.Linear(hidden, d) for d in self.dims)
        for k, d in enumerate(self.dims):
            self.register_buffer(f"average_{k}", torch.zeros(d))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def excitations(self, maps: Sequence[Tensor]) -> List[Tensor]:
        """Each modality's (B, C_k) excitation ``e_k`` for (B, C_k, ...) maps."""
        squeezed = torch.cat([x.mean(dim=tuple(range(2, x.dim()))) for x in maps], 1)  # no copy of a view
        hidden = torch.relu(self.squeeze(squeezed))
        return [torch.sigmoid(fc(hidden)) for fc in self.excite]

    def averages(self) -> List[Tensor]:
        return [self.average_0, self.average_1]

    @torch.no_grad()
    def _update_averages(self, scales: Sequence[Tensor]) -> None:
        # balanced_mmtm.py:113-116: avg <- (mean_b e + step avg) / (step + 1); here over the DDP
        # ranks' batches together, so every rank keeps the same average
        means = [_mean_over_ranks(e.detach().float().mean(0)) for e in scales]
        if self.average_bug:
            means[1] = means[0]
        n = float(self.steps)
        for avg, mean in zip(self.averages(), means):
            avg.copy_((mean + avg * n) / (n + 1))
        self.steps += 1

    def forward(self, maps: Sequence[Tensor], frozen: Optional[int] = None) -> List[Tensor]:
        """Rescales both modalities' (B, C_k, ...) maps.

        Args:
            maps: the two modalities' maps, sample axis first, channel axis second.
            frozen: None, or the modality (0 or 1) whose excitation is replaced by its running
                average (taken after this batch's update, as balanced_mmtm.py:113-152), so that
                no gradient or input-dependent signal reaches it through the module.
        """
        scales = self.excitations(maps)
        if self.training:
            self._update_averages(scales)
        if frozen is not None:
            avg = self.averages()[frozen]
            scales[frozen] = avg.to(scales[frozen].dtype).expand_as(scales[frozen])
        return [x * e.reshape(e.shape + (1,) * (x.dim() - 2)) for x, e in zip(maps, scales)]


class MMTMFusion(nn.Module):
    """A stage fusion for :meth:`MultimodalModel.set_stage_fusion`: one :class:`MMTM` after
    each stage named in ``stages`` (the others pass through).

    Args:
        modalities: the two modalities, in the model's order (index 0 and 1 of ``frozen``).
        channels: stage name -> (C_0, C_1).
        ratio, average_bug: as :class:`MMTM`.

    Attributes:
        frozen: None, or the index of the modality whose excitations are replaced by their
            running averages in the next forward (set by the method that owns the fusion).
    """

    def __init__(self, modalities: Sequence[str], channels: Mapping[str, Sequence[int]], ratio: float = 4,
                 average_bug: bool = False) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.mmtm = nn.ModuleDict({s: MMTM(c, ratio, average_bug) for s, c in channels.items()})
        self.frozen: Optional[int] = None

    def forward(self, stage: str, maps: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        if stage not in self.mmtm:
            return dict(maps)
        out = self.mmtm[stage]([maps[m] for m in self.modalities], self.frozen)
        return dict(zip(self.modalities, out))

    def modality_parameters(self, k: int) -> List[nn.Parameter]:
        """The excitation layers of modality ``k`` (index) in every MMTM."""
        return [p for mmtm in self.mmtm.values() for p in mmtm.excite[k].parameters()]

    def shared_parameters(self) -> List[nn.Parameter]:
        """The squeeze layers, which both modalities use."""
        return [p for mmtm in self.mmtm.values() for p in mmtm.squeeze.parameters()]
