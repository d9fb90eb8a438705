"""Small plotting helpers shared by chapters (an image with a mask outline)."""

from __future__ import annotations

import numpy as np


def show_with_mask(ax, image: np.ndarray, mask: np.ndarray | None = None, title: str = "",
                   color: str = "#ff3030") -> None:
    """Grey image (H, W) with the outline of a boolean mask (H, W) drawn on top."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=0.9)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


