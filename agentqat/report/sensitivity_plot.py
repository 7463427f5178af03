"""The sensitivity map's heat map: layers by probe width, coloured by the KL of that layer alone at that width."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402


def sensitivity_heatmap(sensitivity_map, path: Path) -> Path:
    """Returns `path`, where the heat map of the map's per-layer KL (layers by widths, log colour scale) is saved."""
    layers = sorted(sensitivity_map.layers)
    bits = list(sensitivity_map.bits)
    values = [[max(sensitivity_map.layers[layer].kl[b], 1e-6) for b in bits] for layer in layers]
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(bits), 1.2 + 0.22 * len(layers)))
    image = ax.imshow(values, aspect="auto", cmap="viridis", norm=LogNorm())
    ax.set_xticks(range(len(bits)), [f"{b} bits" for b in bits])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_ylabel("layer")
    ax.set_title(f"KL, one layer quantized\n{sensitivity_map.arena}", fontsize=9)
    fig.colorbar(image, ax=ax, label="KL to base (nats/token)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
