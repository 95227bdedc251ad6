"""Modules sized by feature sizes that are known only once the encoders have run.

An encoder without ``out_dim`` (a plain ``nn.Sequential``, a timm or torchvision backbone)
tells its feature size D_m only on its first batch. What is sized by D_m (the unimodal
heads, the fusion, MCR's projections and CEB head) is built at once as a *placeholder*:
the module itself, built with stand-in sizes on the meta device, whose parameters and
buffers are then replaced by uninitialized ones (torch's ``UninitializedParameter``, as in
``nn.LazyLinear``). An optimizer created before the first batch holds these objects.
:func:`realize` builds the real module once the sizes are known and moves its values into
the very same parameter objects, so that optimizer trains them.

The stand-in sizes differ between modalities (2, 3, ...), so a builder whose structure
depends on whether the sizes differ (the contrastive projections) builds its larger form;
parameters the real module turns out not to need stay uninitialized and receive no
gradient.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy

from ..errors import ConfigError

#: builder(feature_dims) -> module (or None when nothing is needed for those sizes)
Builder = Callable[[Dict[str, int]], Optional[nn.Module]]


def placeholder(build: Builder, modalities: Sequence[str],
                device: Optional[torch.device] = None) -> Optional[nn.Module]:
    """``build`` run with stand-in sizes, every parameter and buffer uninitialized.

    Args:
        build: feature_dims -> module; called again by :func:`realize` with the real sizes.
            Its parameter structure must not depend on the sizes' values beyond whether
            they differ (keep it a ``functools.partial`` of a module-level function so the
            placeholder pickles).
        modalities: the model's modalities, in order.
        device: where the parameters will live (the model's device).
    """
    with torch.device("meta"):
        module = build({m: i + 2 for i, m in enumerate(modalities)})
    if module is None:
        return None
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = UninitializedParameter(p.requires_grad, device=device, dtype=p.dtype)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = UninitializedBuffer(False, device=device, dtype=b.dtype)
    module._mmb_build = build  # plain attribute: not a parameter, not in the state dict
    return module


def is_placeholder(module: Optional[nn.Module]) -> bool:
    """True for a module made by :func:`placeholder` and not yet realized."""
    return module is not None and hasattr(module, "_mmb_build")


def realize(module: Optional[nn.Module], dims: Dict[str, int]) -> Optional[nn.Module]:
    """The real module for ``dims``, holding the placeholder's own parameter and buffer
    objects (materialized with the new module's initial values, or kept as they are if a
    state dict already filled them). Anything else is returned unchanged."""
    if not is_placeholder(module):
        return module
    real = module._mmb_build(dict(dims))
    if real is None:
        return None
    old = {**dict(module.named_parameters(remove_duplicate=False)),
           **dict(module.named_buffers(remove_duplicate=False))}
    for prefix, sub in real.named_modules(remove_duplicate=False):
        for slots in (sub._parameters, sub._buffers):
            for name, new in list(slots.items()):
                key = f"{prefix}.{name}" if prefix else name
                if new is None or key not in old:
                    continue
                slots[name] = _fill(old[key], new, key)
    return real


def _fill(old: torch.Tensor, new: torch.Tensor, key: str) -> torch.Tensor:
    with torch.no_grad():
        if is_lazy(old):
            old.materialize(new.shape, device=old.device, dtype=old.dtype)
            old.copy_(new)
        elif old.shape != new.shape:
            raise ConfigError(f"{key}: loaded shape {tuple(old.shape)} does not fit feature sizes giving "
                              f"{tuple(new.shape)}")
    return old


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (CPU when it has none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
