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
    extra: dict = field(default_factory=dict)


def _predictions(card: ModelCard, probs: np.ndarray, indices: np.ndarray) -> list[Prediction]:
    return [Prediction(int(i), card.class_ids[i], card.class_names[i], float(probs[i])) for i in indices]


def explain_model(model: torch.nn.Module, card: ModelCard, image: Image.Image, name: str | None = None,
                  cam_method: str = "gradcam", target: int | None = None, topk: int = 5) -> ModelResult:
    device = next(model.parameters()).device
    size = model_input_size(*image.size, card.input_size)
    x = to_tensor(image, card.input_size, card.mean, card.std, size).to(device)
    capture: Capture = capture_attention(model, x, card.attention, keep_graph=True)
    try:
        probs = capture.probs[0]
        if target is not None and not 0 <= target < len(card.class_ids):
            raise SsavizError(f"target class {target} is out of range for {card.name} "
                              f"({len(card.class_ids)} classes)")
        target_index = int(probs.argmax()) if target is None else int(target)
        cams = compute_cams(model, x, capture, cam_method, [target_index])
    finally:
        capture.release_graph()
    order = np.argsort(-probs)[:topk]
    blocks = {stage: [BlockMaps(b.name, b.shape, b.activation[0],
                                None if b.spatial is None else b.spatial[0],
                                None if b.channel is None else b.channel[0]) for b in bs]
              for stage, bs in capture.blocks.items()}
    return ModelResult(
        name=name or card.name, card=card, predictions=_predictions(card, probs, order),
        target=_predictions(card, probs, [target_index])[0], blocks=blocks,
        cams={s: m[0] for s, m in cams.items()}, input_size=size)


def explain_image(models: list[tuple[str, torch.nn.Module, ModelCard]], image: Image.Image,
                  cam_method: str = "gradcam", target: int | None = None,
                  progress=None) -> Explanation:
    """Explain ``image`` with each (name, model, card); ``progress(i, n, name)`` is told before each."""
    if not models:
        raise SsavizError("no models to compare")
    start = time.perf_counter()
    results = []
    for i, (name, model, card) in enumerate(models):
        if progress:
            progress(i, len(models), name)
        results.append(explain_model(model, card, image, name, cam_method, target))
    device = str(next(models[0][1].parameters()).device)
    return Explanation(image, cam_method, target, results, device, time.perf_counter() - start)


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
