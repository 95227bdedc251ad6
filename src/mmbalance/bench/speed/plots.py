"""The two figures of ``bench speed``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

from .cells import mipd_terms


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_permutations(results: Sequence, path: Path) -> Path:
    """Per setting: ms/step relative to multiloss against P, for latent permutations
    (``mcr_p*``) and input-space noise (``mcr_input_noise_p*``, P extra encoder passes);
    ``mcr_reencode`` (P = 32) and joint as markers/lines."""
    plt = _plt()
    by_setting: Dict[str, List] = defaultdict(list)
    for c in results:
        by_setting[c.setting.name].append(c)
    fig, axes = plt.subplots(1, len(by_setting), figsize=(4.6 * len(by_setting), 3.8), squeeze=False)
    for ax, (name, cells) in zip(axes[0], by_setting.items()):
        ms = {c.variant.label: c.timing.median for c in cells}
        ref = ms.get("multiloss") or ms.get("joint") or 1.0
        ref_name = "multiloss" if "multiloss" in ms else "joint"
        for prefix, style, label in (("mcr_p", "o-", "MCR, latent permutations"),
                                     ("mcr_input_noise_p", "s--", "MCR, input-space noise (P encoder passes)")):
            points = sorted((int(k[len(prefix):]), v / ref) for k, v in ms.items()
                            if k.startswith(prefix) and k[len(prefix):].isdigit())
            if points:
                ax.plot([p for p, _ in points], [r for _, r in points], style, label=label)
        for k, v in ms.items():
            if k.startswith("mcr_p") and "_chunk" in k:
                perms, chunk = k[len("mcr_p"):].split("_chunk")
                ax.plot([int(perms)], [v / ref], "x", color="tab:green", ms=9,
                        label=f"latent permutations, chunk_size={chunk}")
        if "mcr_reencode" in ms:
            ax.plot([32], [ms["mcr_reencode"] / ref], "D", color="tab:red", label="mcr_reencode (P=32)")
        if "mcr_input_zero" in ms:
            ax.plot([1], [ms["mcr_input_zero"] / ref], "^", color="tab:purple", label="input zero-masking")
        ax.axhline(1.0, color="gray", lw=1, label=ref_name)
        if "joint" in ms and ref_name != "joint":
            ax.axhline(ms["joint"] / ref, color="gray", lw=1, ls=":", label="joint")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("P (permutations / noise draws)")
        ax.set_ylabel(f"ms/step / {ref_name}")
        ax.set_title(cells[0].setting.title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_modalities(results: Sequence, path: Path) -> Path:
    """Per swept setting: ms/step relative to multiloss (same M) against M, for MCR over all
    2^M - 2 subsets and over singletons only (``max_subset_size=1``), each point labelled
    with its number of MIPD terms."""
    plt = _plt()
    by_setting: Dict[str, List] = defaultdict(list)
    for c in results:
        by_setting[c.setting.name].append(c)
    fig, axes = plt.subplots(1, len(by_setting), figsize=(4.6 * len(by_setting), 3.8), squeeze=False)
    styles = {"mcr_p32": ("o-", "MCR P=32, all subsets", 5),
              "mcr_p32_singletons": ("s--", "MCR P=32, max_subset_size=1", -11)}
    for ax, (name, cells) in zip(axes[0], by_setting.items()):
        base = {len(c.setting.names): c.timing.median for c in cells if c.variant.label == "multiloss"}
        for label, (style, legend, offset) in styles.items():
            points = sorted((len(c.setting.names), c.timing.median / base[len(c.setting.names)],
                             mipd_terms(c.variant, c.setting.names))
                            for c in cells if c.variant.label == label and len(c.setting.names) in base)
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=legend)
            for m, value, terms in points:
                ax.annotate(f"{terms} terms", (m, value), textcoords="offset points", xytext=(4, offset), fontsize=7)
        ax.axhline(1.0, color="gray", lw=1, label="multiloss")
        ax.set_xticks(sorted({len(c.setting.names) for c in cells}))
        ax.set_xlabel("modalities M")
        ax.set_ylabel("ms/step / multiloss")
        ax.set_title(cells[0].setting.title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
