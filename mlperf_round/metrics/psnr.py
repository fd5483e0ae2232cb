"""PSNR between two uint8 image sets: how far an optimized engine's images are from the reference pipeline's."""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB over 8-bit levels; inf when the images are equal."""
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
