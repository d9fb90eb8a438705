"""Small plotting helpers shared by chapters (image + mask/heat-map overlays)."""

from __future__ import annotations

import numpy as np


def show_with_mask(ax, image: np.ndarray, mask: np.ndarray | None = None, title: str = "",
                   color: str = "#ff3030") -> None:
    """Grey image (H, W) with the outline of a boolean mask (H, W) drawn on top."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=0.9)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def show_heatmap(ax, image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None,
                 title: str = "", alpha: float = 0.45) -> None:
    """Grey image with a [0, 1] heat map (H, W) blended on top and an optional mask outline."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=["white"], linewidths=0.9)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
