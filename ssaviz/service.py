"""Everything the web app does, as plain Python: compare, re-render, teach, list the zoo.

The app only wires widgets to a ``Service``. A compare request runs each
model once and stores the result in a bounded LRU cache; changing the stage,
colormap, opacity or colour-scale mode re-renders from that cache without
running any model.
"""

import hashlib
import logging
import os
from functools import lru_cache
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .allocator import keep_freed_memory
from .capture import model_calls
from .cams import CAM_TITLES
from .device import describe, resolve_device
from .errors import SsavizError
from .explain import Explanation, add_block_activations, explain_image
from .images import display_copy, load_image
from .layers import attention_spec
from .render import channel_plot, render_grid, render_overlays
from .resnet import STAGES
from .zoo import ModelStore, Zoo, discover

log = logging.getLogger(__name__)

CACHE_SIZE = int(os.environ.get("SSAVIZ_CACHE_SIZE", "32"))
DISPLAY_LONG_SIDE = 640
ALL_STAGES = "all"


@dataclass
class CompareView:
    cam_grid: Image.Image
    attention_grid: Image.Image
    channels: Image.Image | None
    gallery: list[tuple[Image.Image, str]]
    predictions: dict
    table: str  # Markdown: top-5 per model, side by side


@dataclass
class CachedResult:
    explanation: Explanation
    display: Image.Image  # the image at display size, overlays are drawn on it
    original_size: tuple[int, int] = (0, 0)
    channel_plot: Image.Image | bool | None = None  # None: not drawn yet; False: no model has channel weights
    tables: tuple[dict, str] | None = None  # predictions and their Markdown table, made once
    thumbnails: dict = field(default_factory=dict)  # long side -> the image at grid-cell size

    def thumbnail(self, long_side: int) -> Image.Image:
        small = self.thumbnails.get(long_side)
        if small is None:
            small = self.thumbnails[long_side] = display_copy(self.display, long_side)
        return small


class ResultCache:
    """Least-recently-used results of compare requests, at most ``capacity``."""

    def __init__(self, capacity: int = CACHE_SIZE):
        self.capacity = capacity
        self._items: OrderedDict[str, CachedResult] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedResult | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item: CachedResult) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _stages(stage: str | None) -> tuple[str, ...]:
    if not stage or stage == ALL_STAGES:
        return STAGES
    if stage not in STAGES:
        raise SsavizError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)} or all")
    return (stage,)


class Service:
    def __init__(self, zoo: Zoo | None = None, device: str | None = None, cache_size: int | None = None):
        keep_freed_memory()
        self.zoo = zoo if zoo is not None else discover()
        self.device = resolve_device(device)
        self.store = ModelStore(self.zoo, self.device)
        self.cache = ResultCache(cache_size or CACHE_SIZE)
        self._block_lock = threading.Lock()  # two views of one result add its block maps once

    def warm_up(self) -> None:
        """Load the default family and the libraries a first request needs (run it in a thread at start)."""
        try:
            import cv2  # noqa: F401
            import matplotlib.figure  # noqa: F401
            import pytorch_grad_cam  # noqa: F401

            family = self.default_family()
            for entry in (self.zoo.family(family) if family else []):
                if not entry.online:
                    self.store.get(entry.name)
        except Exception as error:  # a request will meet the same problem and report it
            log.warning("warm-up stopped: %s", error)

    # ---- choices for the controls -------------------------------------------------
    def families(self) -> list[str]:
        local = self.zoo.local_families()
        return local + [f for f in self.zoo.families() if f not in local]

    def default_family(self) -> str | None:
        fams = self.families()
        return fams[0] if fams else None

    def model_names(self, family: str) -> list[str]:
        return [e.name for e in self.zoo.family(family)] if family else []

    def class_choices(self, family: str) -> list[str]:
        if not family:
            return []
        card = self.zoo.family(family)[0].card
        return [f"{name} ({cid})" for cid, name in zip(card.class_ids, card.class_names)]

    def target_index(self, family: str, choice: str | None) -> int | None:
        if not choice or choice == "predicted class":
            return None
        choices = self.class_choices(family)
        if choice not in choices:
            raise SsavizError(f"unknown target class {choice!r} for {family}")
        return choices.index(choice)

    def device_note(self) -> str:
        return describe(self.device)

    # ---- compare ------------------------------------------------------------------
    def compare(self, image_source, family: str | None = None, models: list[str] | None = None,
                cam: str = "gradcam", target: str | None = None, progress=None) -> tuple[str, CachedResult]:
        """Run the comparison and cache it; returns (cache key, result)."""
        image = load_image(image_source)
        family = family or self.default_family()
        if family is None:
            raise SsavizError("the zoo is empty: add checkpoints to checkpoints/ or $SSAVIZ_CHECKPOINTS")
        names = self.model_names(family)
        chosen = [m for m in (models or names) if m]
        unknown = [m for m in chosen if m not in names]
        if unknown:
            raise SsavizError(f"{', '.join(unknown)} not in family {family}")
        if not chosen:
            raise SsavizError("pick at least one model to compare")
        target_index = self.target_index(family, target)
        digest = hashlib.sha1(image.tobytes()).hexdigest()[:16]
        key = f"{digest}:{image.size}:{family}:{','.join(chosen)}:{cam}:{target_index}"
        cached = self.cache.get(key)
        if cached is not None:
            return key, cached
        loaded = []
        for i, name in enumerate(chosen):
            if progress:
                progress(i / (2 * len(chosen)), f"loading {name}")
            loaded.append((name, *self.store.get(name)))

        def step(i, n, name):
            if progress:
                progress(0.5 + i / (2 * n), f"running {name}")

        expl = explain_image(loaded, image, cam, target_index, progress=step)
        expl.key = key
        # The app draws at display size only: keep that copy, not the full photo (a cached
        # 40-megapixel upload would otherwise hold 120 MB).
        display = display_copy(image, DISPLAY_LONG_SIDE)
        expl.image = display
        result = CachedResult(expl, display, image.size)
        self.cache.put(key, result)
        return key, result

    def result(self, key: str | None) -> CachedResult:
        cached = self.cache.get(key) if key else None
        if cached is None:
            raise SsavizError("no comparison to show yet (or it was dropped from the cache): press Compare")
        return cached

    def render(self, key: str, stage: str = ALL_STAGES, cmap: str = "jet", alpha: float = 0.5,
               scale: str = "stage") -> CompareView:
        """Draw a cached comparison. Runs no model."""
        return render_view(self.result(key), stage, cmap, alpha, scale)

    @staticmethod
    def predictions(expl: Explanation) -> dict:
        """Top-5, CAM target and per-stage map statistics of every model (what the API returns)."""
        def stats(r, stage: str) -> dict:
            maps = {"cam": r.cams.get(stage), "spatial": r.blocks[stage][-1].spatial,
                    "activation": r.blocks[stage][-1].activation}
            return {kind: {"min": float(m.min()), "max": float(m.max()), "mean": float(m.mean(dtype=np.float64))}
                    for kind, m in maps.items() if m is not None}

        return {r.name: {"attention": r.attention,
                         "top5": [{"class_id": p.class_id, "name": p.name, "prob": round(p.prob, 5)}
                                  for p in r.predictions],
                         "cam_target": r.target.name,
                         "maps": {s: stats(r, s) for s in STAGES}} for r in expl.models}

    def status_line(self, result: CachedResult) -> str:
        expl = result.explanation
        return (f"{len(expl.models)} models on {self.device_note()} in {expl.seconds:.2f} s "
                f"({CAM_TITLES.get(expl.cam_method, expl.cam_method)}); image {result.original_size[0]}x{result.original_size[1]}")

    # ---- stage by stage -----------------------------------------------------------
    def stage_by_stage(self, key: str, model: str, cmap: str = "jet", alpha: float = 0.5) -> tuple[list, str]:
        """Every block of one model in order: its map and the module's formula with this image's numbers."""
        cached = self.result(key)
        expl = cached.explanation
        result = next((r for r in expl.models if r.name == model), None)
        if result is None:
            raise SsavizError(f"{model} was not part of this comparison")
        spec = attention_spec(result.attention)
        if not result.has_spatial:  # each block's activation map is shown: one more forward, once
            with self._block_lock:
                model, _ = self.store.get(result.name)
                add_block_activations(model, result)
        gallery, lines = [], [f"### {result.name} ({result.title})", "", formula(result.attention), "",
                              "| block | output C×H×W | spatial map | channel weights |", "|---|---|---|---|"]
        from .render import overlay_array

        base = np.asarray(cached.display)  # one array for every block's overlay
        for stage in STAGES:
            for block in result.blocks[stage]:
                c, h, w = block.shape
                shown = block.spatial if block.spatial is not None else block.activation
                what = "saW" if result.attention == "ssa" else "spatial map" if block.spatial is not None else "activation"
                img = Image.fromarray(overlay_array(base, shown, float(shown.min()), float(shown.max()), cmap, alpha))
                gallery.append((img, f"{block.name} · {c}×{h}×{w} · {what}"))
                sp = (f"{_range(block.spatial)}" if block.spatial is not None
                      else f"none (activation {_range(block.activation)})")
                ch = "none"
                if block.channel is not None:
                    v = block.channel
                    ch = f"{_range(v)}, mean {v.mean():.3g}"
                    if spec.channel_is_gate:
                        ch += f"; {int((v < 0.5).sum())} of {v.size} below 0.5"
                lines.append(f"| {block.name} | {c}×{h}×{w} | {sp} | {ch} |")
        return gallery, "\n".join(lines)

    # ---- zoo ----------------------------------------------------------------------
    def zoo_markdown(self) -> str:
        rows = ["| model | family | attention | classes | top-1 | top-5 | parameters | added by attention | FLOPs (2×MAC) | status |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for e in self.zoo.entries.values():
            c = e.card
            acc = c.accuracy or {}
            params, attn_params, flops = c.parameters, c.attention_parameters, c.flops
            if None in (params, attn_params, flops):  # cards of online entries carry no numbers
                params, attn_params, flops = architecture_stats(c.config, c.input_size)
            rows.append(
                f"| {e.name} | {e.family} | {attention_spec(c.attention).title} | {len(c.class_ids)} | "
                f"{_pct(acc.get('top1'))} | {_pct(acc.get('top5'))} | {_num(params)} | "
                f"{_num(attn_params)} | {_num(flops)} | {e.status()} |")
        out = "\n".join(rows)
        if self.zoo.problems:
            out += "\n\n**Left out of the zoo:**\n\n" + "\n".join(f"- {p}" for p in self.zoo.problems)
        return out

    def zoo_cards(self) -> dict:
        return {name: e.card.to_dict() | {"status": e.status(), "family": e.family}
                for name, e in self.zoo.entries.items()}


def render_view(cached: CachedResult, stage: str = ALL_STAGES, cmap: str = "jet", alpha: float = 0.5,
                scale: str = "stage") -> CompareView:
    """Everything the compare view shows, drawn from a result: grids, channel plot, overlays, tables."""
    expl = cached.explanation
    stages = _stages(stage)
    cell = 320 if len(stages) == 1 else 224
    small = cached.thumbnail(cell)
    cam_grid = render_grid(expl, "cam", stages, cmap, alpha, scale, cell, models_as_columns=True, base=small)
    attention_grid = render_grid(expl, "spatial", stages, cmap, alpha, scale, cell, models_as_columns=True,
                                 base=small)
    if cached.channel_plot is None:  # does not depend on the display controls: drawn once per result
        cached.channel_plot = channel_plot(expl.models) or False
    cams = render_overlays(expl, "cam", stages, cmap, alpha, scale, image=cached.display)
    title = CAM_TITLES.get(expl.cam_method, expl.cam_method)
    gallery = [(img, f"{name} · {s} · {title}") for (name, s), img in cams.items()]
    if cached.tables is None:  # nor do the predictions and map statistics
        cached.tables = (Service.predictions(expl), predictions_table(expl))
    return CompareView(cam_grid, attention_grid, cached.channel_plot or None, gallery, *cached.tables)


def formula(attention: str) -> str:
    return {
        "ssa": "**SSA**: `seW = GAP(X)` · `saW = σ(BN(mean_c(seW·X)))` · `Y = saW·X` (2 parameters per block)",
        "se": "**SE**: `s = σ(W2·ReLU(W1·GAP(X)))`, reduction 16 · `Y = s·X`",
        "salient": "**Salient**: `w = σ(BN(conv1x1(X)))` · `Y = w·X`",
        "cbam": "**CBAM**: `Mc = σ(MLP(AvgPool(X)) + MLP(MaxPool(X)))` · `X' = Mc·X` · "
                "`Ms = σ(conv7x7([mean_c X'; max_c X']))` · `Y = Ms·X'`",
        "none": "**ResNet**: no attention module; the map is the channel-mean of each block's output.",
    }[attention]


def predictions_table(expl: Explanation) -> str:
    header = "| # | " + " | ".join(f"{r.name}" for r in expl.models) + " |"
    rows = [header, "|---|" + "---|" * len(expl.models)]
    for k in range(max(len(r.predictions) for r in expl.models)):
        cells = [f"{r.predictions[k].name} ({r.predictions[k].prob:.1%})" if k < len(r.predictions) else ""
                 for r in expl.models]
        rows.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


@lru_cache(maxsize=64)
def architecture_stats(config, input_size: int) -> tuple[int, int, int]:
    """(parameters, parameters of the attention layers, FLOPs at input_size) of an architecture,
    counted on the meta device: no memory, no weights needed."""
    import torch

    from .resnet import ResNet, attention_parameters, count_flops

    with torch.device("meta"):
        model = ResNet(config)
    return sum(p.numel() for p in model.parameters()), attention_parameters(model), count_flops(model, input_size)


def _range(v: np.ndarray) -> str:
    return f"[{float(v.min()):.3g}, {float(v.max()):.3g}]"


def _pct(v) -> str:
    return f"{v:.2%}" if isinstance(v, (int, float)) else "—"


def _num(v) -> str:
    if not isinstance(v, (int, float)):
        return "—"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.2f}{unit}"
    return str(int(v))


__all__ = ["ALL_STAGES", "CompareView", "ResultCache", "Service", "formula", "model_calls"]
