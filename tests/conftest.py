import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ssaviz.checkpoints import ModelCard, save_checkpoint  # noqa: E402
from ssaviz.resnet import build_resnet  # noqa: E402

IMAGENETTE_IDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
                  "n03394916", "n03417042", "n03425413", "n03445777", "n03888257"]
IMAGENETTE_NAMES = ["tench", "English springer", "cassette player", "chain saw", "church",
                    "French horn", "garbage truck", "gas pump", "golf ball", "parachute"]
ATTENTIONS = ("none", "se", "ssa", "salient", "cbam")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def randomise_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorms non-trivial statistics so maps and logits are not flat."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def tiny_model(attention="ssa", depth=18, width=0.125, stem="imagenet", num_classes=10, seed=0):
    torch.manual_seed(seed)
    return randomise_norms(build_resnet(depth, attention, width, stem, num_classes), seed)


def make_checkpoint(directory: Path, attention="ssa", name=None, depth=18, width=0.125, stem="imagenet",
                    input_size=64, dataset="imagenette", seed=0, half=True):
    model = tiny_model(attention, depth, width, stem, len(IMAGENETTE_IDS), seed)
    card = ModelCard(name=name or f"tiny_{attention}", dataset=dataset, class_ids=list(IMAGENETTE_IDS),
                     class_names=list(IMAGENETTE_NAMES), attention=attention, depth=depth, width=width,
                     stem=stem, input_size=input_size)
    path = save_checkpoint(model, card, directory, half=half)
    return path, card, model


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """A directory with one tiny checkpoint per attention type (family 'imagenette')."""
    directory = tmp_path_factory.mktemp("zoo")
    for i, attention in enumerate(ATTENTIONS):
        make_checkpoint(directory, attention, seed=i)
    return directory


@pytest.fixture
def zoo_env(tiny_zoo, monkeypatch):
    monkeypatch.setenv("SSAVIZ_BUNDLED", "0")
    monkeypatch.setenv("SSAVIZ_CHECKPOINTS", str(tiny_zoo))
    return tiny_zoo


@pytest.fixture(scope="session")
def photo_path(tmp_path_factory) -> Path:
    """A real photo from a registry package (scikit-image's data module), not square."""
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "coffee.png"
    Image.fromarray(data.coffee()).save(path)  # 600x400
    return path


@pytest.fixture(scope="session")
def photo(photo_path) -> Image.Image:
    return Image.open(photo_path).convert("RGB")


def rand_image(w=96, h=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
