"""Image loading for records: from a path or bytes, RGB, area-preserving resize into [min_pixels, max_pixels]."""

from __future__ import annotations

import io
import math

from PIL import Image


def resize_to_pixel_bounds(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Scale both sides by one factor so that width * height lands inside [min_pixels, max_pixels]."""
    area = image.width * image.height
    if min_pixels <= area <= max_pixels:
        return image
    scale = math.sqrt((max_pixels if area > max_pixels else min_pixels) / area)
    # Round towards the bound so the result stays inside it.
    rounder = math.floor if area > max_pixels else math.ceil
    size = (max(1, rounder(image.width * scale)), max(1, rounder(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """A copy of `image` (RGB, RGBA or L) whose longest side is at most `max_side` pixels (aspect kept)."""
    small = image.convert("RGB") if image.mode not in ("RGB", "RGBA", "L") else image.copy()
    small.thumbnail((max_side, max_side))
    return small


def load_image(source: str | bytes, min_pixels: int, max_pixels: int, where: str = "") -> Image.Image:
    """Open `source` (path or encoded bytes) as an RGB image within the pixel bounds."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # missing, corrupt, truncated, or a bomb
        label = "image bytes" if isinstance(source, bytes) else source
        raise ValueError(f"{where}: cannot read image {label}: {err}") from err
    return resize_to_pixel_bounds(to_rgb(image), min_pixels, max_pixels)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent pixels composited onto white (diagrams often have transparent backgrounds)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: plain convert() would clip to white
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale a high-bit-depth grey image to 8 bits by its bit depth (not by its own range, which would
    stretch a faint image's contrast)."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    full_scale = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    return Image.fromarray(np.clip(values / full_scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
