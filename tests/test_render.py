import numpy as np
import pytest
from PIL import Image

from ssaviz.explain import explain_image, explanation_summary
from ssaviz.render import (channel_plot, color_ranges, colorbar, overlay, render_grid, render_overlays)
from ssaviz.resnet import STAGES
from tests.conftest import ATTENTIONS, IMAGENETTE_IDS, IMAGENETTE_NAMES, tiny_model
from ssaviz.checkpoints import ModelCard


@pytest.fixture(scope="module")
def explanation(photo):
    models = []
    for i, a in enumerate(ATTENTIONS):
        card = ModelCard(name=f"m_{a}", dataset="imagenette", class_ids=IMAGENETTE_IDS,
                         class_names=IMAGENETTE_NAMES, attention=a, depth=18, width=0.125, input_size=64)
        models.append((card.name, tiny_model(a, seed=i), card))
    return explain_image(models, photo)


def test_maps_are_upsampled_to_the_full_image_with_its_aspect(explanation, photo):
    assert photo.size == (600, 400)
    result = explanation.models[0]
    assert result.input_size == (96, 64)  # whole image, shorter side = input size
    out = render_overlays(explanation, "cam", stages=("layer3",))
    for img in out.values():
        assert img.size == photo.size


def test_upsampling_keeps_where_the_peak_is():
    m = np.zeros((4, 6), np.float32)
    m[1, 4] = 1.0
    up = np.asarray(overlay(Image.new("RGB", (600, 400)), m, 0, 1, cmap="gray", alpha=1.0))[..., 0]
    y, x = np.unravel_index(up.argmax(), up.shape)
    assert abs(y - 150) <= 50 and abs(x - 450) <= 50  # the centre of cell (1, 4) of a 4x6 grid


def test_overlay_is_the_blend_of_photo_and_coloured_map():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    m = np.full((3, 5), 0.25, np.float32)  # constant: upsampling cannot change it
    from ssaviz.render import colormap_lut

    heat = colormap_lut("viridis")[round(0.25 * 255)].astype(np.float64)
    expected = np.asarray(img) * 0.7 + heat * 0.3
    got = np.asarray(overlay(img, m, 0, 1, cmap="viridis", alpha=0.3)).astype(np.float64)
    assert np.abs(got - expected).max() <= 1.0


def test_overlay_opacity_and_colormap():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    m = np.tile(np.linspace(0, 1, 4, dtype=np.float32), (2, 1))  # dark left, bright right
    assert np.array_equal(np.asarray(overlay(img, m, 0, 1, alpha=0.0)), np.asarray(img))
    hot = np.asarray(overlay(img, m, 0, 1, cmap="gray", alpha=1.0))
    assert hot[:, 0].mean() < 30 and hot[:, -1].mean() > 225


def test_scale_modes(explanation):
    own = color_ranges(explanation, "cam", "map")
    per_stage = color_ranges(explanation, "cam", "stage")
    shared = color_ranges(explanation, "cam", "shared")
    names = [r.name for r in explanation.models]
    for s in STAGES:
        assert len({per_stage[(n, s)] for n in names}) == 1
        lo, hi = per_stage[(names[0], s)]
        assert lo == min(own[(n, s)][0] for n in names) and hi == max(own[(n, s)][1] for n in names)
    assert len(set(shared.values())) == 1
    # Activation maps shown in place of missing spatial attention keep their own range.
    spatial = color_ranges(explanation, "spatial", "shared")
    assert spatial[("m_none", "layer2")] == own_range(explanation, "m_none", "layer2")
    assert spatial[("m_ssa", "layer2")] == spatial[("m_cbam", "layer4")]


def own_range(expl, name, stage):
    r = next(r for r in expl.models if r.name == name)
    m = r.blocks[stage][-1].activation
    return float(m.min()), float(m.max())


def test_grid_and_legend_and_channel_plots(explanation):
    grid = render_grid(explanation, "cam", cell=128)
    assert grid.width > 5 * 128 and grid.height > 5 * 85
    labels = np.asarray(grid)[:, :150].min(axis=2)  # the model names and predictions, left of the cells
    assert (labels < 80).sum() > 500  # dark text was drawn
    across = render_grid(explanation, "spatial", cell=128, models_as_columns=True)
    header = np.asarray(across)[:80, 110:].min(axis=2)
    assert (header < 80).sum() > 500
    assert colorbar(0, 1, width=100).size[0] == 100
    plots = {r.name: channel_plot(r) for r in explanation.models}
    assert plots["m_none"] is None and plots["m_salient"] is None
    assert all(plots[n].size[0] > 500 for n in ("m_se", "m_ssa", "m_cbam"))
    together = channel_plot(explanation.models)  # one row per model with channel weights
    assert together.size[1] > 2.5 * plots["m_se"].size[1]


def test_summary_has_every_stage(explanation):
    summary = explanation_summary(explanation)
    ssa = summary["models"]["m_ssa"]["stages"]["layer2"]
    assert ssa["channel"]["kind"] == "squeeze" and ssa["channel"]["below_half"] is None
    se = summary["models"]["m_se"]["stages"]["layer2"]
    assert se["channel"]["below_half"] == sum(v < 0.5 for v in se["channel"]["values"])


def test_overlays_accept_images_of_any_mode(explanation):
    grey = Image.new("L", (90, 60), 128)
    out = render_overlays(explanation, "spatial", stages=("layer2",), image=grey)
    assert all(img.mode == "RGB" and img.size == (90, 60) for img in out.values())
    assert overlay(Image.new("RGBA", (30, 20)), np.ones((2, 3), np.float32), 0, 1).mode == "RGB"
