"""Image-classification data for training and evaluation, decoded once into memory.

A source is an ImageFolder directory (``root/<class>/<file>``) or a ZIP whose
members are ``[<split>/]<class>/<file>`` (read in place, no extraction). All
images are decoded once to a uint8 tensor of one size; augmentation then runs
on whole batches on the training device (see ``augment``).
"""

import io
import math
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import SsavizError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}

# Class names of the data sets the presets know; folder names are the class ids.
KNOWN_CLASS_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
}


@dataclass
class InMemoryDataset:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    class_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        return [KNOWN_CLASS_NAMES.get(c, c) for c in self.class_ids]


def list_images(source: Path) -> tuple[list[tuple[str, str]], str]:
    """[(member or path, class id)] and the kind ('zip' or 'dir')."""
    source = Path(source)
    if not source.exists():
        raise SsavizError(f"{source}: no such file or directory")
    items = []
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise SsavizError(f"{source}: not a ZIP archive or a directory")
        with zipfile.ZipFile(source) as z:
            for name in z.namelist():
                parts = name.split("/")
                if len(parts) >= 2 and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    items.append((name, parts[-2]))
        kind = "zip"
    else:
        for cls_dir in sorted(p for p in source.iterdir() if p.is_dir()):
            for f in sorted(cls_dir.rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    items.append((str(f), cls_dir.name))
        kind = "dir"
    if not items:
        raise SsavizError(f"{source}: no images in class folders")
    return items, kind


def _resize_center(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size``, then the central ``size`` x ``size`` square."""
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_dataset(source: Path, size: int, class_ids: list[str] | None = None,
                 limit: int | None = None, workers: int | None = None) -> InMemoryDataset:
    """Decode every image of ``source`` at ``size`` x ``size``.

    ``class_ids`` fixes the label order (a model's card); folders not in it
    are an error, so a model is never scored on classes it does not know.
    """
    items, kind = list_images(source)
    found = sorted({c for _, c in items})
    if class_ids is None:
        class_ids = found
    else:
        unknown = [c for c in found if c not in class_ids]
        if unknown:
            raise SsavizError(f"{source}: class folders {', '.join(unknown[:5])} are not among the model's classes")
    index = {c: i for i, c in enumerate(class_ids)}
    if limit:
        rng = np.random.default_rng(0)
        items = [items[i] for i in sorted(rng.permutation(len(items))[:limit])]
    workers = workers or min(8, os.cpu_count() or 1)

    if kind == "zip":
        archive = zipfile.ZipFile(source)

        def read(name: str) -> bytes:
            return archive.read(name)
    else:
        def read(name: str) -> bytes:
            return Path(name).read_bytes()

    def decode(item):
        name, _ = item
        with Image.open(io.BytesIO(read(name))) as img:
            return _resize_center(img, size)

    if kind == "zip":
        arrays = [decode(it) for it in items]  # zipfile reads are not thread-safe
        archive.close()
    else:
        with ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(decode, items))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([index[c] for _, c in items], dtype=torch.int64)
    return InMemoryDataset(images, labels, list(class_ids))


def normalise(batch_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    x = batch_uint8.float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def augment(batch: torch.Tensor, out_size: int, generator: torch.Generator | None = None,
            scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random-resized-crop and horizontal flip of a whole float batch at once, on its device.

    Each sample gets its own crop (area fraction in ``scale``, aspect in
    ``ratio``) through one affine grid sample, so augmentation costs a
    fraction of a training step even on a GPU.
    """
    n, device = batch.shape[0], batch.device
    rand = torch.rand(n, 5, generator=generator, device="cpu").to(device)
    area = scale[0] + (scale[1] - scale[0]) * rand[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width as a fraction of the image
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (rand[:, 2] * 2 - 1) * (1 - w)  # centre, kept inside the image
    cy = (rand[:, 3] * 2 - 1) * (1 - h)
    flip = torch.where(rand[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (n, 3, out_size, out_size), align_corners=False)
    return F.grid_sample(batch, grid.to(batch.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)


def center_view(batch: torch.Tensor, out_size: int) -> torch.Tensor:
    if batch.shape[-1] == out_size:
        return batch
    return F.interpolate(batch, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)
