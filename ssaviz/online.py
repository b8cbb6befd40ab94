"""Official ImageNet weights for users with a network: downloaded on first use.

Each entry loads into ssaviz's own ResNet (same keys as torchvision's) so the
maps come from the same capture code as local checkpoints. Files are cached
where their libraries cache them: torch hub's directory for torchvision,
the Hugging Face cache for timm.
"""

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from .checkpoints import IMAGENET_MEAN, IMAGENET_STD, ModelCard, build_model
from .errors import CheckpointError, NetworkRequired

TORCHVISION_RESNET50_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
TIMM_SERESNET50_REPO = "timm/seresnet50.a1_in1k"
TIMM_WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class OnlineEntry:
    name: str
    attention: str
    source: str  # shown in the zoo
    url: str


ONLINE_ENTRIES = {
    "resnet50": OnlineEntry("resnet50", "none", "torchvision ResNet50_Weights.IMAGENET1K_V2",
                            TORCHVISION_RESNET50_URL),
    "se_resnet50": OnlineEntry("se_resnet50", "se", "timm seresnet50.a1_in1k",
                               f"https://huggingface.co/{TIMM_SERESNET50_REPO}"),
}


def imagenet_classes() -> tuple[list[str], list[str]]:
    """WordNet ids and short names of the 1000 ImageNet classes, from packages on disk."""
    from timm.data import ImageNetInfo
    from torchvision.models import ResNet50_Weights

    ids = list(ImageNetInfo().label_names())
    names = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    return ids, names


def online_card(name: str) -> ModelCard:
    entry = ONLINE_ENTRIES[name]
    ids, names = imagenet_classes()
    return ModelCard(
        name=name, dataset="imagenet-1k", class_ids=ids, class_names=names,
        attention=entry.attention, depth=50, width=1.0, stem="imagenet", input_size=224,
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        recipe={"source": entry.source, "url": entry.url},
        notes="Official weights, downloaded on first use.",
    )


def _torch_hub_dir(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(name: str, cache_dir: Path | None = None) -> Path | None:
    """The weights file if it is already downloaded, else None. Never touches the network."""
    if name == "resnet50":
        path = _torch_hub_dir(cache_dir) / os.path.basename(urlparse(TORCHVISION_RESNET50_URL).path)
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(TIMM_SERESNET50_REPO, TIMM_WEIGHTS_FILE,
                                   cache_dir=str(cache_dir) if cache_dir else None)
    return Path(found) if isinstance(found, str) else None


def status(name: str, cache_dir: Path | None = None) -> str:
    return "ready" if cached_path(name, cache_dir) else "downloads on first use (needs a network connection)"


def _require_network(name: str, url: str) -> None:
    # Fail in a second with a clear sentence, instead of the libraries' retries.
    host = urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise NetworkRequired(
            f"{name} needs a network connection to download its weights from {host} "
            "on first use; the local models work offline") from None


def _download(name: str, cache_dir: Path | None) -> Path:
    path = cached_path(name, cache_dir)
    if path:
        return path
    entry = ONLINE_ENTRIES[name]
    _require_network(name, entry.url)
    try:
        if name == "resnet50":
            model_dir = _torch_hub_dir(cache_dir)
            model_dir.mkdir(parents=True, exist_ok=True)
            path = model_dir / os.path.basename(urlparse(entry.url).path)
            torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=path.stem.split("-")[-1])
            return path
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(TIMM_SERESNET50_REPO, TIMM_WEIGHTS_FILE,
                                    cache_dir=str(cache_dir) if cache_dir else None))
    except OSError as error:
        raise NetworkRequired(f"{name}: download failed, it needs a network connection ({error})") from None


def _read_official_state(name: str, path: Path) -> dict[str, torch.Tensor]:
    try:
        if name == "resnet50":
            # torchvision ships pickled state dicts; weights_only refuses anything but tensors.
            return torch.load(path, map_location="cpu", weights_only=True)
        from safetensors.torch import load_file

        # timm names the attention layer `se`; ours is `attn`.
        return {k.replace(".se.", ".attn."): v for k, v in load_file(str(path)).items()}
    except Exception as error:  # a damaged download, say
        raise CheckpointError(f"{path}: cannot read the {name} weights ({error})") from None


def load_online(name: str, cache_dir: Path | None = None,
                device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Download if needed, then load the official weights into ssaviz's ResNet-50."""
    if name not in ONLINE_ENTRIES:
        raise CheckpointError(f"{name!r} is not an online entry ({', '.join(ONLINE_ENTRIES)})")
    card = online_card(name)
    path = _download(name, cache_dir)
    state = _read_official_state(name, path)
    model = build_model(card)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: keys do not match {name} (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})")
    return model.eval().to(device), card
