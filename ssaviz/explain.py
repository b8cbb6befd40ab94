"""From an image and some models to everything ssaviz shows: one pass per model.

``explain_image`` is what the CLI and the web app call. For each model it
runs one forward (capture: native attention, activations, logits) and, for
gradient CAMs, one backward of the target logit serving every stage.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .capture import BlockMaps, Capture, capture_attention
from .cams import compute_cams
from .checkpoints import ModelCard
from .errors import SsavizError
from .images import model_input_size, to_tensor
from .layers import attention_spec
from .resnet import STAGES


@dataclass
class Prediction:
    index: int
    class_id: str
    name: str
    prob: float


@dataclass
class ModelResult:
    name: str
    card: ModelCard
    predictions: list[Prediction]
    target: Prediction  # the class the CAMs explain
    blocks: dict[str, list[BlockMaps]]  # arrays without the batch axis
    cams: dict[str, np.ndarray]  # raw CAM per stage, (h, w)
    input_size: tuple[int, int]  # (w, h) fed to the network
    # The (1, 3, h, w) tensor the network saw, kept by explain_image so a later view can run the
    # network again on exactly the same input (``add_block_activations``).
    network_input: torch.Tensor | None = field(default=None, repr=False)

    @property
    def attention(self) -> str:
        return self.card.attention

    @property
    def title(self) -> str:
        return attention_spec(self.card.attention).title

    @property
    def has_spatial(self) -> bool:
        return attention_spec(self.card.attention).spatial is not None

    @property
    def has_channel(self) -> bool:
        return attention_spec(self.card.attention).channel is not None

    def stage_map(self, kind: str, stage: str) -> np.ndarray | None:
        """The map shown for a stage: CAM, or the stage's last block's spatial/activation map."""
        if kind == "cam":
            return self.cams.get(stage)
        block = self.blocks[stage][-1]
        return getattr(block, kind)


@dataclass
class Explanation:
    image: Image.Image
    cam_method: str
    requested_target: int | None
    models: list[ModelResult]
    device: str
    seconds: float
    key: str = ""  # cache key of this request


def _predictions(card: ModelCard, probs: np.ndarray, indices: np.ndarray) -> list[Prediction]:
    return [Prediction(int(i), card.class_ids[i], card.class_names[i], float(probs[i])) for i in indices]


class InputCache:
    """Network inputs made once per request: models with the same input size and
    normalisation (a family, usually) share one resized, normalised tensor."""

    def __init__(self):
        self._tensors: dict[tuple, torch.Tensor] = {}

    def get(self, images: list[Image.Image], card: ModelCard, device: torch.device) -> torch.Tensor:
        size = model_input_size(*images[0].size, card.input_size)
        key = (size, tuple(card.mean), tuple(card.std), str(device))
        x = self._tensors.get(key)
        if x is None:
            x = torch.cat([to_tensor(img, card.input_size, card.mean, card.std, size) for img in images])
            x = self._tensors[key] = x.to(device)
        return x


def explain_batch(model: torch.nn.Module, card: ModelCard, images: list[Image.Image], name: str | None = None,
                  cam_method: str = "gradcam", target: int | None = None, topk: int = 5,
                  inputs: InputCache | None = None, keep_input: bool = False) -> list[ModelResult]:
    """One forward and one backward for a batch of images that share the network input size.

    ``keep_input`` keeps each image's network input on its result (``ModelResult.network_input``).
    """
    device = next(model.parameters()).device
    x = (inputs or InputCache()).get(images, card, device)
    size = (x.shape[3], x.shape[2])
    if target is not None and not 0 <= target < len(card.class_ids):
        raise SsavizError(f"target class {target} is out of range for {card.name} ({len(card.class_ids)} classes)")
    capture: Capture = capture_attention(model, x, card.attention, keep_graph=True)
    try:
        probs = capture.probs
        targets = [int(p.argmax()) if target is None else int(target) for p in probs]
        # Images are independent in eval mode: the gradient of the summed target logits
        # gives each image its own CAM, in one backward.
        cams = compute_cams(model, x, capture, cam_method, targets)
    finally:
        capture.release_graph()
    results = []
    for i, p in enumerate(probs):
        results.append(ModelResult(
            name=name or card.name, card=card, predictions=_predictions(card, p, np.argsort(-p)[:topk]),
            target=_predictions(card, p, [targets[i]])[0], blocks=image_blocks(capture, i),
            cams={s: m[i] for s, m in cams.items()}, input_size=size,
            network_input=x[i:i + 1] if keep_input else None))
    return results


def image_blocks(capture: Capture, i: int) -> dict[str, list[BlockMaps]]:
    """The maps of image ``i`` of a captured batch (arrays without the batch axis)."""
    def pick(a):
        return None if a is None else a[i]

    return {stage: [BlockMaps(b.name, b.shape, pick(b.activation), pick(b.spatial), pick(b.channel)) for b in bs]
            for stage, bs in capture.blocks.items()}


def add_block_activations(model: torch.nn.Module, result: ModelResult) -> None:
    """Give every block of ``result`` its activation map (a comparison makes only the stages'):
    one forward on the input the network saw. The stage-by-stage view of networks without
    spatial attention needs them."""
    if all(b.activation is not None for bs in result.blocks.values() for b in bs):
        return
    if result.network_input is None:
        raise SsavizError("this result no longer has its network input: run the comparison again")
    capture = capture_attention(model, result.network_input, result.attention, block_activations=True)
    for stage, blocks in result.blocks.items():
        for block, full in zip(blocks, capture.blocks[stage]):
            block.activation = full.activation[0]


def explain_model(model: torch.nn.Module, card: ModelCard, image: Image.Image, name: str | None = None,
                  cam_method: str = "gradcam", target: int | None = None, topk: int = 5,
                  inputs: InputCache | None = None, keep_input: bool = False) -> ModelResult:
    return explain_batch(model, card, [image], name, cam_method, target, topk, inputs, keep_input)[0]


def explain_image(models: list[tuple[str, torch.nn.Module, ModelCard]], image: Image.Image,
                  cam_method: str = "gradcam", target: int | None = None,
                  progress=None) -> Explanation:
    """Explain ``image`` with each (name, model, card); ``progress(i, n, name)`` is told before each."""
    if not models:
        raise SsavizError("no models to compare")
    start = time.perf_counter()
    results, inputs = [], InputCache()
    for i, (name, model, card) in enumerate(models):
        if progress:
            progress(i, len(models), name)
        results.append(explain_model(model, card, image, name, cam_method, target, inputs=inputs, keep_input=True))
    device = str(next(models[0][1].parameters()).device)
    return Explanation(image, cam_method, target, results, device, time.perf_counter() - start)


def explain_images(models: list[tuple[str, torch.nn.Module, ModelCard]], images: list[Image.Image],
                   cam_method: str = "gradcam", target: int | None = None,
                   batch_size: int = 16) -> list[Explanation]:
    """Explain many images, batching those that share a network input size (same aspect ratio)."""
    if not models:
        raise SsavizError("no models to compare")
    start = time.perf_counter()
    per_image: list[dict[int, ModelResult]] = [{} for _ in images]
    by_input_size: dict[int, list[int]] = {}
    for m, (_, _, card) in enumerate(models):
        by_input_size.setdefault(card.input_size, []).append(m)
    for input_size, members in by_input_size.items():
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(model_input_size(*img.size, input_size), []).append(i)
        for indices in groups.values():
            for k in range(0, len(indices), batch_size):
                chunk = indices[k:k + batch_size]
                batch, inputs = [images[i] for i in chunk], InputCache()  # one input tensor for the models
                for m in members:
                    name, model, card = models[m]
                    for i, result in zip(chunk, explain_batch(model, card, batch, name, cam_method, target,
                                                              inputs=inputs)):
                        per_image[i][m] = result
    device = str(next(models[0][1].parameters()).device)
    seconds = (time.perf_counter() - start) / max(1, len(images))
    return [Explanation(img, cam_method, target, [results[m] for m in sorted(results)], device, seconds)
            for img, results in zip(images, per_image)]


def stage_summary(result: ModelResult, stage: str) -> dict:
    """Numbers per stage for JSON output and the UI: map statistics and channel weights."""

    def stats(arr: np.ndarray | None) -> dict | None:
        if arr is None:
            return None
        flat = np.asarray(arr, dtype=np.float64)
        peak = np.unravel_index(int(flat.argmax()), flat.shape)
        return {"shape": list(flat.shape), "min": float(flat.min()), "max": float(flat.max()),
                "mean": float(flat.mean()), "std": float(flat.std()),
                "peak_yx": [float((peak[0] + 0.5) / flat.shape[0]), float((peak[1] + 0.5) / flat.shape[1])]}

    last = result.blocks[stage][-1]
    spec = attention_spec(result.attention)
    out = {
        "shape": list(last.shape),
        "blocks": len(result.blocks[stage]),
        "cam": stats(result.cams.get(stage)),
        "spatial": stats(last.spatial),
        "activation": stats(last.activation),
        "channel": None,
    }
    if last.channel is not None:
        w = np.asarray(last.channel, dtype=np.float64)
        out["channel"] = {
            "kind": "gate" if spec.channel_is_gate else "squeeze",
            "n": int(w.size), "min": float(w.min()), "max": float(w.max()), "mean": float(w.mean()),
            "below_half": int((w < 0.5).sum()) if spec.channel_is_gate else None,
            "values": [round(float(v), 5) for v in w],
        }
    return out


def explanation_summary(expl: Explanation) -> dict:
    return {
        "cam": expl.cam_method,
        "target": expl.requested_target,
        "device": expl.device,
        "seconds": round(expl.seconds, 3),
        "image_size": list(expl.image.size),
        "models": {
            r.name: {
                "attention": r.attention,
                "input_size": list(r.input_size),
                "predictions": [p.__dict__ for p in r.predictions],
                "target": r.target.__dict__,
                "stages": {s: stage_summary(r, s) for s in STAGES},
            } for r in expl.models
        },
    }
