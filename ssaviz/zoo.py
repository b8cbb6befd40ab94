"""The zoo: every checkpoint in ``checkpoints/`` and ``$SSAVIZ_CHECKPOINTS``, plus the online entries.

Models are grouped into families by dataset and classes: only a family's
models are compared side by side. A file that cannot be used is reported
(file and reason) and left out; the rest of the zoo still works.
"""

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import online
from .checkpoints import ModelCard, check_weights, load_checkpoint, read_card
from .errors import CheckpointError, SsavizError

log = logging.getLogger(__name__)

PACKAGE_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
ONLINE_FAMILY = "imagenet-1k"


def checkpoint_dirs() -> list[Path]:
    """``checkpoints/`` beside the package (unless SSAVIZ_BUNDLED=0), then $SSAVIZ_CHECKPOINTS."""
    dirs = [] if os.environ.get("SSAVIZ_BUNDLED", "1") == "0" else [PACKAGE_CHECKPOINTS]
    extra = os.environ.get("SSAVIZ_CHECKPOINTS")
    if extra:
        dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    seen, unique = set(), []
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


@dataclass
class ZooEntry:
    name: str
    card_: ModelCard | None  # None: an online entry's card, made on first use
    family: str = ""
    path: Path | None = None  # None for online entries
    online: bool = False

    @property
    def card(self) -> ModelCard:
        if self.card_ is None:
            # Building it imports the ImageNet class lists (timm, torchvision): not at start-up.
            self.card_ = online.online_card(self.name)
        return self.card_

    @property
    def attention(self) -> str:
        return self.card_.attention if self.card_ else online.ONLINE_ENTRIES[self.name].attention

    def status(self) -> str:
        return online.status(self.name) if self.online else "ready"

    def summary(self) -> dict:
        card = self.card
        return {
            "name": self.name, "family": self.family, "attention": card.attention,
            "classes": len(card.class_ids), "path": str(self.path) if self.path else None,
            "online": self.online, "status": self.status(), "dataset": card.dataset,
            "depth": card.depth, "width": card.width, "stem": card.stem,
            "input_size": card.input_size, "accuracy": card.accuracy,
            "parameters": card.parameters, "attention_parameters": card.attention_parameters,
            "flops": card.flops,
        }


@dataclass
class Zoo:
    entries: dict[str, ZooEntry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def families(self) -> dict[str, list[ZooEntry]]:
        out: dict[str, list[ZooEntry]] = {}
        for entry in self.entries.values():
            out.setdefault(entry.family, []).append(entry)
        return out

    def local_families(self) -> list[str]:
        return [f for f, es in self.families().items() if any(not e.online for e in es)]

    def default_family(self) -> str | None:
        local = self.local_families()
        return local[0] if local else None

    def family(self, name: str) -> list[ZooEntry]:
        fams = self.families()
        if name not in fams:
            raise SsavizError(f"no model family {name!r}; the zoo has: {', '.join(fams) or 'none'}")
        return fams[name]

    def get(self, name: str) -> ZooEntry:
        if name not in self.entries:
            raise SsavizError(f"no model {name!r} in the zoo; it has: {', '.join(self.entries) or 'none'}")
        return self.entries[name]


def _family_key(card: ModelCard) -> tuple:
    return card.family or card.dataset, tuple(card.class_ids)


def discover(dirs: list[Path] | None = None, include_online: bool = True) -> Zoo:
    """Scan the checkpoint directories. Reads cards and safetensors headers only."""
    zoo = Zoo()
    found: list[tuple[Path, ModelCard]] = []
    for directory in dirs if dirs is not None else checkpoint_dirs():
        if not directory.is_dir():
            if directory != PACKAGE_CHECKPOINTS:
                zoo.problems.append(f"{directory}: checkpoint directory does not exist")
            continue
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() in PICKLE_SUFFIXES:
                zoo.problems.append(f"{path}: skipped, {path.suffix} files may hold pickled code "
                                    "and are never loaded; convert the weights to safetensors")
                continue
            if path.suffix != ".safetensors":
                continue
            try:
                card = read_card(path.with_suffix(".json"))
                check_weights(card, path)
            except CheckpointError as error:
                zoo.problems.append(str(error))
                continue
            found.append((path, card))

    # Within a family, list models in the registry's order (none, se, ssa, salient, cbam).
    from .layers import ATTENTION_TYPES

    order = list(ATTENTION_TYPES)
    found.sort(key=lambda item: (order.index(item[1].attention), item[1].name))
    # Name families by dataset; tell apart same-dataset checkpoints with other classes.
    family_names: dict[tuple, str] = {}
    for path, card in found:
        key = _family_key(card)
        if key not in family_names:
            taken = set(family_names.values())
            name = card.family or card.dataset
            if name in taken:
                name = f"{name}-{len(card.class_ids)}cls"
            while name in taken:
                name += "'"
            family_names[key] = name
        if card.name in zoo.entries:
            zoo.problems.append(f"{path}: skipped, a model named {card.name!r} is already in the zoo "
                                f"({zoo.entries[card.name].path})")
            continue
        zoo.entries[card.name] = ZooEntry(card.name, card, family_names[key], path)

    if include_online:
        for name in online.ONLINE_ENTRIES:
            if name not in zoo.entries:
                zoo.entries[name] = ZooEntry(name, None, ONLINE_FAMILY, online=True)
    for problem in zoo.problems:
        log.warning(problem)
    return zoo


class ModelStore:
    """Loaded models, shared by requests (read-only use), bounded, least recently used out."""

    def __init__(self, zoo: Zoo, device: torch.device, capacity: int = 12):
        self.zoo = zoo
        self.device = device
        self.capacity = capacity
        self._models: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, name: str) -> tuple[torch.nn.Module, ModelCard]:
        entry = self.zoo.get(name)
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name], entry.card
            load_lock = self._loading.setdefault(name, threading.Lock())
        with load_lock:  # one load per model, even when many requests ask at once
            with self._lock:
                if name in self._models:
                    return self._models[name], entry.card
            if entry.online:
                model, _ = online.load_online(name, device=self.device)
            else:
                model = load_checkpoint(entry.path, entry.card, device=self.device)
            with self._lock:
                self._models[name] = model
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            return model, entry.card

    def loaded(self) -> list[torch.nn.Module]:
        with self._lock:
            return list(self._models.values())
