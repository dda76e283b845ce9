"""Flattening images with alpha: the background that keeps their ink readable, chosen from content."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from PIL import Image

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (128, 128, 128)

# Decide from at most this many pixels (a nearest-neighbour sample of larger images).
SAMPLE_PIXELS = 1_000_000
# Below this see-through share (1 - mean alpha) the background hardly shows: keep white.
MIN_CLEAR_SHARE = 0.05
# Ink at least this light (alpha-weighted share of visible pixels) goes onto black, at most
# (1 - this) onto white; anything between is mixed ink (a dark name and a light tagline) and goes
# onto mid grey, which keeps half the contrast of both instead of all of one and none of the other.
ONE_SIDED_SHARE = 0.75
# Rec. 601 luma; a pixel at or above the middle reads better on black than on white.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_LIGHT_LUMA = 127.5


def background_for(rgba: npt.NDArray[np.uint8]) -> tuple[int, int, int]:
    """The colour to put under an H×W×4 RGBA array so its visible ink keeps its contrast.

    Only what shows counts: each pixel weighs its alpha, so whatever colour the fully
    transparent pixels hold (black, white, leftovers) never sways the choice. Dark ink gets white
    (what a viewer shows), light ink black, mixed ink grey. Opaque content is never changed by
    the choice, so a photo with a few transparent corners, or with a watermark blended into it,
    reads as before.
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an H×W×4 RGBA array, got shape {rgba.shape}")
    if rgba.size == 0:
        return WHITE
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    if 1.0 - float(alpha.mean()) < MIN_CLEAR_SHARE:
        return WHITE
    seen = float(alpha.sum())
    if seen == 0.0:
        return WHITE  # nothing visible at all
    luma = rgba[..., :3].astype(np.float32) @ _LUMA
    light = float(alpha[luma >= _LIGHT_LUMA].sum()) / seen
    if light >= ONE_SIDED_SHARE:
        return BLACK
    if light <= 1.0 - ONE_SIDED_SHARE:
        return WHITE
    return GREY


def flatten(image: Image.Image) -> Image.Image:
    """Any Pillow image with transparency to RGB on the background `background_for` picks."""
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, background_for(_sample(rgba)))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _sample(rgba: Image.Image) -> npt.NDArray[np.uint8]:
    """The image as an RGBA array, every k-th pixel in both directions when it is large."""
    width, height = rgba.size
    step = max(1, math.ceil(math.sqrt(width * height / SAMPLE_PIXELS)))
    if step > 1:
        rgba = rgba.resize((max(1, width // step), max(1, height // step)), Image.Resampling.NEAREST)
    return np.asarray(rgba, dtype=np.uint8)
