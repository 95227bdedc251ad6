"""``mmbalance bench speed``: what each balancing method costs per training step.

Every method is driven exactly as the training loop drives it, without Lightning around
it: ``optimizer.zero_grad`` -> ``method(inputs)`` -> ``method.training_loss`` -> the
loop's finiteness check -> ``loss.total.backward()`` -> ``method.after_backward()`` ->
``optimizer.step()`` (Adam over ``method.param_groups()``, as
:func:`mmbalance.engine.build_optimizer` builds it): :func:`mmbalance.engine.train_step`. The same function runs every
method, on one random batch per setting.

Timing: all cells of a setting live in one process (one model, one optimizer per method)
and are timed in interleaved rounds (the order rotates every round), after warm-up
rounds; a sample is the mean of enough consecutive steps to last ``min_sample_s``, and a
cell's figure is the median of its samples. Memory: each cell again in a fresh process
(forked from a server that has only imported torch and mmbalance), a few steps, then the
process's peak resident set (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).

Settings (``SETTINGS``; ``--quick`` shrinks (b) and (c) so the whole command takes a
minute or two):

- ``synthetic`` (a): the synthetic MLP model, two 100-d modalities, 5 classes, batch 64.
- ``cremad`` (b): ResNet-18 audio (257 x 188 log spectrogram) + ResNet-18 video
  (3 frames of 3 x 224 x 224), 6 classes, batch 8 (``--batch 32`` on a GPU).
- ``mosei`` (c): the 5-layer sequence Transformer (width 40, feed-forward 2048) on video
  (50 x 35), audio (50 x 74) and text (50 x 300), batch 32; binary classification so that
  the classification-only baselines (ogm_ge, agm) run too.
- ``cremad_conformer`` (d): the paper's CREMA-D Conformer model (configs/cremad/conformer): a
  randomly initialized wav2vec2 of wav2vec2-large-robust's size, first 12 layers (needs the
  ``pretrained`` extra), then a Conformer (50-d bottleneck, 512 wide, 5 blocks) on 3 s of
  16 kHz audio; face features (150 x 1408) through the same Conformer; 6 classes, batch 8.
- ``sthsth_swin`` (e): a Video Swin-T per modality (video, flow) on 16 x 224 x 224 clips
  (configs/sthsth/swin), 174 classes, batch 16.

Not in the default ``--settings``; on a CPU run (d) and (e) at ``--batch 2`` (a step takes
seconds). ``mcr_p32_ceb`` is MCR as those configs run it (ceb_weight 1).
Modules: ``cells`` (settings, variants, one step), ``timing``, ``memory`` (the fork
server), ``profile``, ``report`` (CSV and markdown), ``plots``, ``run`` (the command).
"""

import importlib

#: public name -> the submodule that defines it, imported on first use (PEP 562), so that
#: registering the command (``mmbalance --help``) does not import torch
_LAZY = {
    "METHODS": "cells", "MODALITY_SWEEP": "cells", "MODALITY_VARIANTS": "cells", "PERMUTATION_SWEEP": "cells",
    "QUICK_SETTINGS": "cells", "SETTINGS": "cells",
    "HEAVY": "cells", "BENCH_ENCODERS": "cells", "MCRReencode": "cells", "Runner": "cells",
    "Setting": "cells", "SpeedVariant": "cells", "build_method": "cells", "build_model": "cells",
    "fused_rows": "cells", "make_batch": "cells", "make_optimizer": "cells", "make_runner": "cells",
    "mipd_terms": "cells", "modality_setting": "cells", "variant_by_label": "cells", "MemoryServer": "memory",
    "measure_memory": "memory", "memory_worker": "memory", "saved_for_backward_mb": "memory", "profile_cells": "profile",
    "CellResult": "report", "Protocol": "run", "SpeedConfig": "run", "environment": "run",
    "protocol_for": "run", "resolve_settings": "run", "run_group": "run", "run_speed": "run",
    "Timing": "timing", "time_interleaved": "timing",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["BENCH_ENCODERS", "HEAVY",
           "METHODS", "MODALITY_SWEEP", "MODALITY_VARIANTS", "PERMUTATION_SWEEP", "QUICK_SETTINGS", "SETTINGS",
           "MCRReencode", "Runner", "Setting", "SpeedVariant", "build_method", "build_model", "fused_rows",
           "make_batch", "make_optimizer", "make_runner", "mipd_terms", "modality_setting", "variant_by_label",
           "MemoryServer", "measure_memory", "memory_worker", "saved_for_backward_mb", "profile_cells", "CellResult",
           "Protocol", "SpeedConfig", "environment", "protocol_for", "resolve_settings", "run_group", "run_speed",
           "Timing", "time_interleaved"]
