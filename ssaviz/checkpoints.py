"""Checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (model card).

The card says how to build the network and how to read its outputs; loading
checks the weights against the network the card describes before using them,
and only ever reads safetensors (no pickle).
"""

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .errors import CheckpointError
from .resnet import ResNet, ResNetConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelCard:
    name: str
    dataset: str
    class_ids: list[str]
    class_names: list[str]
    attention: str = "none"
    depth: int = 50
    width: float = 1.0
    stem: str = "imagenet"
    input_size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    architecture: str = "resnet"
    family: str = ""  # the zoo groups models by this (default: the dataset)
    recipe: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)  # {"top1", "top5", "n", "data"}
    parameters: int | None = None
    attention_parameters: int | None = None
    flops: int | None = None
    hardware: str = ""
    date: str = ""
    license: str = ""
    notes: str = ""

    @property
    def config(self) -> ResNetConfig:
        return ResNetConfig(self.depth, self.attention, self.width, self.stem, len(self.class_ids))

    @classmethod
    def from_dict(cls, data: dict, source: str = "card") -> "ModelCard":
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: the card is not a JSON object")
        known = {f.name for f in fields(cls)}
        required = {"name", "dataset", "class_ids", "class_names"}
        missing = sorted(required - data.keys())
        if missing:
            raise CheckpointError(f"{source}: the card lacks {', '.join(missing)}")
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.validate(source)
        return card

    def validate(self, source: str = "card") -> None:
        from .layers import ATTENTION_TYPES
        from .resnet import DEPTHS, STEMS

        def bad(why: str) -> CheckpointError:
            return CheckpointError(f"{source}: {why}")

        if self.architecture != "resnet":
            raise bad(f"architecture {self.architecture!r} is not supported (only 'resnet')")
        if self.attention not in ATTENTION_TYPES:
            raise bad(f"unknown attention {self.attention!r}")
        if self.depth not in DEPTHS:
            raise bad(f"depth {self.depth!r} is not one of {sorted(DEPTHS)}")
        if self.stem not in STEMS:
            raise bad(f"stem {self.stem!r} is not one of {list(STEMS)}")
        if not isinstance(self.width, (int, float)) or not 0 < self.width <= 8:
            raise bad(f"width {self.width!r} is not a positive number")
        if not isinstance(self.input_size, int) or not 8 <= self.input_size <= 1024:
            raise bad(f"input_size {self.input_size!r} is not an integer from 8 to 1024")
        if not self.class_ids or len(self.class_ids) != len(self.class_names):
            raise bad("class_ids and class_names must be non-empty lists of the same length")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not (isinstance(value, list) and len(value) == 3
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
                raise bad(f"{key} must be a list of three numbers")
        if any(v <= 0 for v in self.std):
            raise bad("std values must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


def read_card(path: Path) -> ModelCard:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: model card is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: model card is not valid JSON ({error})") from None
    return ModelCard.from_dict(data, str(path))


def write_card(card: ModelCard, path: Path) -> None:
    Path(path).write_text(json.dumps(card.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_model(card: ModelCard) -> ResNet:
    return ResNet(card.config)


def _expected_shapes(card: ModelCard) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only, no memory, no init cost
        model = build_model(card)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(card: ModelCard, weights_path: Path) -> None:
    """Raise CheckpointError naming what differs between the file and its card."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: weights file is missing") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({error})") from None
    expected = _expected_shapes(card)
    problems = []
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} {list(shapes[k])} (card says {list(v)})" for k, v in expected.items()
             if k in shapes and shapes[k] != v]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(
            f"{weights_path.name} does not match its card ({card.attention}, depth {card.depth}, "
            f"width {card.width}, {len(card.class_ids)} classes): " + "; ".join(problems))


def load_checkpoint(weights_path: Path, card: ModelCard | None = None,
                    device: str | torch.device = "cpu") -> ResNet:
    """Build the card's network and load the file's weights (checked first), in eval mode, fp32."""
    from safetensors.torch import load_file

    weights_path = Path(weights_path)
    card = card or read_card(weights_path.with_suffix(".json"))
    check_weights(card, weights_path)
    state = load_file(str(weights_path), device="cpu")
    model = build_model(card)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval().to(device)


def save_checkpoint(model: ResNet, card: ModelCard, directory: Path, half: bool = True) -> Path:
    """Write ``NAME.safetensors`` (fp16 by default, to keep files small) and ``NAME.json``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        state[k] = v.half() if half and v.is_floating_point() else v
    path = directory / f"{card.name}.safetensors"
    save_file(state, str(path), metadata={"format": "pt", "card": f"{card.name}.json"})
    write_card(card, directory / f"{card.name}.json")
    return path
