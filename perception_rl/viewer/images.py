"""`ImageStore`: the page's images, each embedded once as a data: URI and referred to by a key."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

from PIL import Image

from perception_rl.data.images import fit_within


class ImageStore:
    """Collects images for the page; a key per distinct image, so a picture shown many times is embedded once.

    Args:
        max_side: images larger than this (longest side, pixels) are scaled down before embedding.
    """

    def __init__(self, max_side: int = 320):
        self.max_side = max_side
        self.uris: dict[str, str] = {}
        self._by_path: dict[Path, str | None] = {}

    def add_png_file(self, path: Path) -> str | None:
        """A stored PNG (the rollout log's, already small) as is; None when the file is missing."""
        path = Path(path)
        if path not in self._by_path:
            self._by_path[path] = self._add_bytes(path.read_bytes(), "image/png") if path.is_file() else None
        return self._by_path[path]

    def add_image(self, image: Image.Image) -> str:
        """Any image, scaled to fit `max_side` and encoded as PNG."""
        buffer = io.BytesIO()
        fit_within(image, self.max_side).save(buffer, format="PNG")
        return self._add_bytes(buffer.getvalue(), "image/png")

    def add_file(self, path: Path) -> str | None:
        """An image file of any format; None when it cannot be read."""
        path = Path(path)
        if path not in self._by_path:
            try:
                with Image.open(path) as image:
                    self._by_path[path] = self.add_image(image)
            except (OSError, ValueError):
                self._by_path[path] = None
        return self._by_path[path]

    def _add_bytes(self, data: bytes, mime: str) -> str:
        key = hashlib.sha256(data).hexdigest()[:16]
        if key not in self.uris:
            self.uris[key] = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        return key
