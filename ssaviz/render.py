"""Turn maps into pictures: overlays, colour scales with legends, channel plots, grids.

Maps are upsampled to the size of the image they are drawn on, which keeps
the photo's aspect ratio (the network saw the whole image). The colour scale
is chosen per map, per stage (shared by the models compared) or shared by
all maps of a kind, so maps of different models can be compared honestly.
"""

import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .explain import Explanation, ModelResult
from .resnet import STAGES

SCALE_MODES = {
    "map": "each map its own range",
    "stage": "one range per stage, shared by the models",
    "shared": "one range for every map of this kind",
}
MAP_KINDS = {"cam": "CAM", "spatial": "spatial attention", "activation": "activation (channel mean)"}
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "coolwarm", "gray")


@lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}") from None
    return cmap(np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]


@lru_cache(maxsize=8)
def font(size: int = 14) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


# The app draws the views of several requests at once, in threads; FreeType font objects are not
# meant to be shared between threads, so text is drawn by one thread at a time (each label once:
# it is cached).
_text_lock = threading.Lock()


def normalise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo
    if not np.isfinite(span) or span <= 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - lo) / span, 0.0, 1.0)


@lru_cache(maxsize=32)
def _cv_lut(name: str) -> np.ndarray:
    """The colormap as OpenCV's ``applyColorMap`` takes a user table: (256, 1, 3) uint8."""
    return np.ascontiguousarray(colormap_lut(name)[:, None, :])


def _levels(map2d: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (normalise(np.asarray(map2d, dtype=np.float32), lo, hi) * 255.0 + 0.5).astype(np.uint8)


def overlay_array(base: np.ndarray, map2d: np.ndarray, lo: float, hi: float,
                  cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """``map2d`` upsampled to ``base``'s size (an (H, W, 3) uint8 array), coloured on [lo, hi]
    and blended with opacity ``alpha``.

    The map is scaled to 0..255 at its own (small) resolution, then upsampled
    bilinearly, coloured and blended by OpenCV (as pytorch-grad-cam's own
    ``show_cam_on_image``): vectorised C++ that releases the GIL, which keeps
    a whole view to a few milliseconds.
    """
    import cv2

    h, w = base.shape[:2]
    levels = cv2.resize(_levels(map2d, lo, hi), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(levels, _cv_lut(cmap))
    return cv2.addWeighted(base, 1.0 - float(alpha), heat, float(alpha), 0.0)


def overlay(image: Image.Image, map2d: np.ndarray, lo: float, hi: float,
            cmap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """``overlay_array`` on a Pillow image, returning one."""
    return Image.fromarray(overlay_array(_rgb_array(image), map2d, lo, hi, cmap, alpha))


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


@lru_cache(maxsize=512)
def colorbar(lo: float, hi: float, cmap: str = "jet", width: int = 256, height: int = 12,
             label: str = "") -> Image.Image:
    """A horizontal legend: the colour ramp with its end values."""
    ramp = colormap_lut(cmap)[np.linspace(0, 255, width).astype(np.uint8)]
    bar = Image.fromarray(np.repeat(ramp[None], height, axis=0), "RGB")
    f = font(12)
    out = Image.new("RGB", (width, height + 16), "white")
    out.paste(bar, (0, 0))
    draw = ImageDraw.Draw(out)
    with _text_lock:
        draw.text((0, height + 1), _fmt(lo), fill="black", font=f)
        right = _fmt(hi)
        draw.text((width - draw.textlength(right, font=f), height + 1), right, fill="black", font=f)
        if label:
            draw.text(((width - draw.textlength(label, font=f)) / 2, height + 1), label, fill="#555", font=f)
    return out


@lru_cache(maxsize=4096)
def text_mask(text: str, size: int, max_width: int) -> tuple[Image.Image, int] | None:
    """Coverage mask of ``text`` cut to ``max_width`` pixels. Labels repeat across grids, re-renders
    and requests, so each is drawn once and then pasted (drawing text is slow next to pasting).
    Returns the mask and its x offset from the text's origin."""
    f = font(size)
    with _text_lock:
        while text and f.getlength(text) > max_width:
            text = text[:-1]
        if not text:
            return None
        left, _, right, bottom = f.getbbox(text)
        shift = min(0, int(left))  # glyphs may reach left of the origin
        mask = Image.new("L", (max(1, int(right) - shift), max(1, int(bottom))), 0)
        ImageDraw.Draw(mask).text((-shift, 0), text, fill=255, font=f)
    return mask, shift


@lru_cache(maxsize=512)
def colorbar_array(lo: float, hi: float, cmap: str, width: int, height: int) -> np.ndarray:
    """``colorbar`` as a read-only (height + 16, width, 3) array, for pasting into a canvas."""
    arr = np.array(colorbar(lo, hi, cmap, width=width, height=height))
    arr.flags.writeable = False
    return arr


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def shown_map(result: ModelResult, kind: str, stage: str) -> tuple[np.ndarray | None, str]:
    """The map drawn for (kind, stage) and its caption; models with no spatial attention show activations."""
    if kind == "spatial" and not result.has_spatial:
        return result.stage_map("activation", stage), "no spatial attention: activation shown"
    return result.stage_map(kind, stage), MAP_KINDS[kind]


def color_ranges(expl: Explanation, kind: str, mode: str = "map",
                 stages: tuple[str, ...] = STAGES) -> dict[tuple[str, str], tuple[float, float]]:
    """(model, stage) -> (lo, hi) for ``kind`` maps under scale ``mode`` (see SCALE_MODES).

    Shared ranges only pool maps of the same meaning: a model shown with its
    activation map (no spatial attention) keeps its own range.
    """
    if mode not in SCALE_MODES:
        raise ValueError(f"unknown scale mode {mode!r}; choose one of {', '.join(SCALE_MODES)}")
    maps = {}
    for r in expl.models:
        for s in stages:
            m, caption = shown_map(r, kind, s)
            if m is not None:
                maps[(r.name, s)] = (m, caption == MAP_KINDS[kind])
    own = {k: (float(m.min()), float(m.max())) for k, (m, _) in maps.items()}
    if mode == "map":
        return own
    pooled: dict = {}
    for (_, s), (m, poolable) in maps.items():
        if not poolable:
            continue
        group = s if mode == "stage" else "all"
        lo, hi = pooled.get(group, (np.inf, -np.inf))
        pooled[group] = (min(lo, float(m.min())), max(hi, float(m.max())))
    return {(name, s): pooled[s if mode == "stage" else "all"] if poolable else own[(name, s)]
            for (name, s), (m, poolable) in maps.items()}


def render_overlays(expl: Explanation, kind: str, stages: tuple[str, ...] = STAGES,
                    cmap: str = "jet", alpha: float = 0.5, mode: str = "map",
                    image: Image.Image | None = None) -> dict[tuple[str, str], Image.Image]:
    """(model, stage) -> overlay on ``image`` (default: the explained image, full resolution)."""
    base = _rgb_array(image or expl.image)  # one array for all the overlays
    ranges = color_ranges(expl, kind, mode, stages)
    out = {}
    for r in expl.models:
        for s in stages:
            m, _ = shown_map(r, kind, s)
            if m is not None:
                out[(r.name, s)] = Image.fromarray(overlay_array(base, m, *ranges[(r.name, s)], cmap, alpha))
    return out


CHANNEL_WHAT = {"se": "SE excitation s", "cbam": "CBAM channel attention", "ssa": "SSA squeeze seW = GAP(X)"}


class _ChannelFigure:
    """A channel-weight figure for one layout, drawn once and then re-used by blitting.

    Axes, ticks and labels (most of matplotlib's cost) are drawn once into a
    background; a new result restores it and draws only its lines. Every
    panel has a fixed scale so the background stays valid: gates in [0, 1],
    SSA's unbounded squeeze vector divided by its largest magnitude.
    """

    def __init__(self, rows: list[ModelResult], stages: tuple[str, ...], width_px: int, row_px: int):
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from .layers import attention_spec

        ramp = matplotlib.colormaps["viridis"]
        dpi = 100
        height_in = row_px * len(rows) / dpi + 0.3
        self.fig = Figure(figsize=(width_px / dpi, height_in), dpi=dpi)
        axes = self.fig.subplots(len(rows), len(stages), squeeze=False)
        self.lines, self.scaled = [], []
        for ax_row, r in zip(axes, rows):
            gate = attention_spec(r.attention).channel_is_gate
            for j, (ax, stage) in enumerate(zip(ax_row, stages)):
                blocks = r.blocks[stage]
                c = blocks[-1].shape[0]
                for i in range(len(blocks)):
                    (line,) = ax.plot(np.arange(c), np.zeros(c), lw=1.1, animated=True,
                                      color=ramp(0.85 * i / max(1, len(blocks) - 1)))
                    self.lines.append(line)
                    self.scaled.append(not gate)
                ax.axhline(0.5 if gate else 0.0, color="gray", lw=0.7, ls="--")
                ax.set_ylim(-0.03 if gate else -1.05, 1.03 if gate else 1.05)
                ax.set_yticks([0, 0.5, 1] if gate else [-1, 0, 1])
                ax.tick_params(labelsize=7, length=2, pad=1, labelleft=j == 0)
                ax.set_xlim(-0.5, c - 0.5)
                ax.set_xticks([])
                ax.set_title(f"{r.name} · {stage} · {c} ch", fontsize=8, pad=2)
            label = CHANNEL_WHAT.get(r.attention, "channel weight")
            ax_row[0].set_ylabel(label if gate else "seW / max|seW|", fontsize=7)
        self.fig.text(0.5, 0.003, "channels, sorted by weight; one line per block, from the first (dark) "
                      "to the last (light)", ha="center", va="bottom", fontsize=7)
        self.fig.subplots_adjust(left=0.055, right=0.99, bottom=0.32 / height_in + 0.03, top=1 - 0.22 / height_in,
                                 wspace=0.12, hspace=0.45)
        self.canvas = FigureCanvasAgg(self.fig)
        self.canvas.draw()  # everything but the (animated) lines
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)

    def draw(self, rows: list[ModelResult], stages: tuple[str, ...]) -> Image.Image:
        self.canvas.restore_region(self.background)
        values = [np.sort(b.channel)[::-1] for r in rows for s in stages for b in r.blocks[s]]
        for line, v, scaled in zip(self.lines, values, self.scaled):
            if scaled:
                v = v / max(float(np.abs(v).max()), 1e-12)
            line.set_ydata(v)
            line.axes.draw_artist(line)
        return _agg_to_image(self.canvas)


_channel_figures: "OrderedDict[tuple, tuple[threading.Lock, _ChannelFigure]]" = OrderedDict()
_channel_figures_lock = threading.Lock()


def channel_plot(results: ModelResult | list[ModelResult], stages: tuple[str, ...] = STAGES,
                 width_px: int = 960, row_px: int = 190) -> Image.Image | None:
    """Channel weights, one row per model that has them and one panel per stage.

    Each block's weights are sorted high to low (so panels read as "how many
    channels are kept"); gates get a dashed line at 0.5. None if no model has
    channel weights.
    """
    results = [results] if isinstance(results, ModelResult) else results
    rows = [r for r in results if r.has_channel]
    if not rows:
        return None
    layout = (tuple((r.name, r.attention, tuple(tuple(b.shape for b in r.blocks[s]) for s in stages)) for r in rows),
              stages, width_px, row_px)
    with _channel_figures_lock:
        if layout in _channel_figures:
            _channel_figures.move_to_end(layout)
            lock, figure = _channel_figures[layout]
        else:
            lock, figure = threading.Lock(), None
    with lock:  # one request at a time draws on a given figure
        if figure is None:
            figure = _ChannelFigure(rows, stages, width_px, row_px)
            with _channel_figures_lock:
                _channel_figures[layout] = (lock, figure)
                while len(_channel_figures) > 8:
                    _channel_figures.popitem(last=False)
        return figure.draw(rows, stages)


def _agg_to_image(canvas) -> Image.Image:
    """The canvas's pixels as an RGB image (Pillow drops the alpha channel in C)."""
    w, h = canvas.get_width_height(physical=True)
    return Image.frombuffer("RGBA", (w, h), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")


def render_grid(expl: Explanation, kind: str = "cam", stages: tuple[str, ...] = STAGES,
                cmap: str = "jet", alpha: float = 0.5, mode: str = "map", cell: int = 256,
                models_as_columns: bool = False, base: Image.Image | None = None) -> Image.Image:
    """A grid of overlays, models by stages, each cell with its colour legend.

    Default: one row per model (with its prediction) and one column per stage,
    after the input. ``models_as_columns`` turns it round for side-by-side
    viewing. ``base`` is the display copy of the image, if one is at hand.
    """
    from .images import display_copy

    small = base if base is not None and max(base.size) <= cell else display_copy(expl.image, cell)
    cw, ch = small.size
    small_arr = _rgb_array(small)
    ranges = color_ranges(expl, kind, mode, stages)
    legend_h, pad = 30, 8
    models = expl.models
    if models_as_columns:
        label_w, head_h = 110, 92
        rows, cols = ["input", *stages], models
    else:
        label_w, head_h = 190, 40  # two header lines: the stage and its shape
        rows, cols = models, ["input", *stages]
    W = label_w + len(cols) * (cw + pad) + pad
    H = head_h + len(rows) * (ch + legend_h + pad) + pad
    # Pictures go into a NumPy canvas (each overlay is made in place, no conversions), text goes on last.
    canvas = np.full((H, W, 3), 255, np.uint8)
    labels: list[tuple[int, int, list[str], int]] = []  # (x, y, lines, width)
    missing: list[tuple[int, int]] = []

    def model_lines(r: ModelResult) -> list[str]:
        top = r.predictions[0]
        lines = [r.name, r.title, f"top-1: {top.name} ({top.prob:.2f})"]
        if kind == "cam":
            lines.append(f"{expl.cam_method} for: {r.target.name}")
        if kind == "spatial" and not r.has_spatial:
            lines.append("no spatial attention:" if not models_as_columns else "no spatial attention,")
            lines.append("activation map shown" if not models_as_columns else "activation shown")
        return lines

    def stage_label(s: str) -> list[str]:
        return [s] if s == "input" else [s, _shape_text(models[0], s)]

    for j, c in enumerate(cols):
        x = label_w + j * (cw + pad) + pad
        labels.append((x, 5, model_lines(c) if models_as_columns else stage_label(c), cw))
    for i, r_key in enumerate(rows):
        y = head_h + i * (ch + legend_h + pad) + pad
        labels.append((pad, y, stage_label(r_key) if models_as_columns else model_lines(r_key), label_w - pad))
        for j, c_key in enumerate(cols):
            x = label_w + j * (cw + pad) + pad
            model, stage = (c_key, r_key) if models_as_columns else (r_key, c_key)
            m = None if stage == "input" else shown_map(model, kind, stage)[0]
            if stage == "input":
                canvas[y:y + ch, x:x + cw] = small_arr
            elif m is not None:
                lo, hi = ranges[(model.name, stage)]
                canvas[y:y + ch, x:x + cw] = overlay_array(small_arr, m, lo, hi, cmap, alpha)
                bar = colorbar_array(lo, hi, cmap, cw, 10)
                canvas[y + ch + 2:y + ch + 2 + bar.shape[0], x:x + cw] = bar
            else:
                canvas[y:y + ch, x:x + cw] = 0xEE
                missing.append((x + 8, y + ch // 2))
    if models_as_columns:  # the corner: what the grid shows, in lines that fit its narrow column
        title = {"cam": ["CAM", expl.cam_method], "spatial": ["spatial", "attention"],
                 "activation": ["activation", "channel mean"]}[kind]
        labels.append((pad, 5, [*title, f"scale: {mode}"], label_w - pad))

    grid = Image.fromarray(canvas)
    for x, y, lines, width in labels:
        for k, line in enumerate(lines):
            drawn = text_mask(line, 15 if k == 0 else 13, width)
            if drawn is not None:
                mask, dx = drawn
                top = y + k * 17
                grid.paste("black" if k == 0 else "#444", (x + dx, top, x + dx + mask.width, top + mask.height), mask)
    if missing:
        draw = ImageDraw.Draw(grid)
        with _text_lock:
            for xy in missing:
                draw.text(xy, "no map", fill="#888", font=font(13))
    return grid


def _shape_text(result: ModelResult, stage: str) -> str:
    c, h, w = result.blocks[stage][-1].shape
    return f"{c}x{h}x{w}"
