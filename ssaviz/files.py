"""Rendered images as files for the web server, written atomically.

Gradio writes a returned PIL image to a cache path named by its content, in
place: two requests that render the same picture at once rewrite the file
while it is being served, and the download breaks. Handing Gradio a finished
file instead makes it copy the file with an atomic rename. Files here are
short-lived: Gradio keeps its own copy, so old ones are swept away.
"""

import hashlib
import io
import os
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image


class ImageFiles:
    def __init__(self, directory: Path | None = None, max_age_s: float = 300.0, fmt: str = "jpeg"):
        self.directory = Path(directory or tempfile.mkdtemp(prefix="ssaviz-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self.fmt = fmt
        self._last_sweep = 0.0
        self._lock = threading.Lock()

    def save(self, image: Image.Image | None) -> str | None:
        if image is None:
            return None
        buf = io.BytesIO()
        # JPEG: encodes several times faster than WebP or PNG, and overlays are photos. Quality 85 keeps
        # the smooth heat maps intact and sends about a quarter fewer bytes per view than 90.
        image.save(buf, self.fmt, **({"quality": 85} if self.fmt in ("jpeg", "webp") else {}))
        data = buf.getvalue()
        suffix = "jpg" if self.fmt == "jpeg" else self.fmt
        path = self.directory / f"{hashlib.sha1(data).hexdigest()}.{suffix}"
        if not path.exists():
            fd, staging = tempfile.mkstemp(dir=self.directory, prefix=".part-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(staging, path)  # readers see the whole file or none
        else:
            os.utime(path)
        self._sweep()
        return str(path)

    def _sweep(self) -> None:
        now = time.time()
        with self._lock:
            if now - self._last_sweep < self.max_age_s / 4:
                return
            self._last_sweep = now
        for f in self.directory.iterdir():
            try:
                if now - f.stat().st_mtime > self.max_age_s:
                    f.unlink()
            except OSError:
                pass  # another request swept it first
