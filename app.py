"""ssaviz web app: wires Gradio widgets to ``ssaviz.service.Service``. No logic lives here.

    python app.py      # serves on 0.0.0.0:$GRADIO_SERVER_PORT (default 7860)
"""

import functools
import logging
import os
import threading
from pathlib import Path

import gradio as gr

from ssaviz.cams import CAM_METHODS, CAM_TITLES
from ssaviz.errors import SsavizError
from ssaviz.files import ImageFiles
from ssaviz.images import MAX_UPLOAD_BYTES
from ssaviz.render import COLORMAPS, SCALE_MODES
from ssaviz.resnet import STAGES
from ssaviz.service import ALL_STAGES, Service
from ssaviz.stats import server_stats

log = logging.getLogger("ssaviz.app")
ASSETS = Path(__file__).resolve().parent / "assets"
CONCURRENCY = int(os.environ.get("SSAVIZ_CONCURRENCY", "2"))
PREDICTED = "predicted class"


class PhotoInput(gr.Image):
    """gr.Image that hands the uploaded file's path on undecoded: ssaviz's loader decodes it
    (EXIF, odd modes, limits) and turns a broken file into a clear message."""

    def get_block_name(self) -> str:
        return "image"  # the browser side is gr.Image's

    def preprocess(self, payload):
        if payload is None or (payload.url and payload.url.startswith("data:")):
            return super().preprocess(payload)
        return payload.path


def user_errors(fn):
    """Show a user's problem as a Gradio error message, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SsavizError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as error:
            log.exception("request failed")
            raise gr.Error(f"Something went wrong on the server ({type(error).__name__}); "
                           "the page still works, try another image or model.", print_exception=False) from None

    return wrapper


def build_demo(service: Service) -> gr.Blocks:
    family0 = service.default_family()
    files = ImageFiles()

    def as_files(view):
        return (files.save(view.cam_grid), files.save(view.attention_grid), files.save(view.channels),
                [(files.save(img), caption) for img, caption in view.gallery])
    examples = sorted(str(p) for p in ASSETS.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    @user_errors
    def compare(image, family, models, cam, target, stage, cmap, alpha, scale, progress=gr.Progress()):
        if image is None:
            raise SsavizError("upload a photo (or click an example) first")
        key, result = service.compare(image, family, models, cam, target,
                                      progress=lambda f, msg: progress(f, desc=msg))
        view = service.render(key, stage, cmap, alpha, scale)
        return (key, view.table, *as_files(view), view.predictions, service.status_line(result))

    @user_errors
    def rerender(key, stage, cmap, alpha, scale):
        if not key:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return as_files(service.render(key, stage, cmap, alpha, scale))

    @user_errors
    def stage_view(key, model, cmap, alpha):
        if not key:
            raise SsavizError("run a comparison first, then pick one of its models")
        gallery, table = service.stage_by_stage(key, model, cmap, alpha)
        return [(files.save(img), caption) for img, caption in gallery], table

    @user_errors
    def on_family(family):
        names = service.model_names(family)
        return (gr.update(choices=names, value=names),
                gr.update(choices=[PREDICTED] + service.class_choices(family), value=PREDICTED))

    def on_models(models):
        return gr.update(choices=models or [], value=(models or [None])[0])

    # Gradio's copies of results are deleted after an hour, so a long-running Space does not fill its disk.
    with gr.Blocks(title="ssaviz: what do attention modules attend to?", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# ssaviz\nDrop a photo and see, side by side and stage by stage, what each network "
                    "attends to: Grad-CAM, the networks' own attention maps (SSA, Salient, CBAM) and their "
                    f"channel weights (SE, CBAM, SSA). Running on **{service.device_note()}**.")
        key = gr.Textbox(visible=False, label="result id")
        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    image = PhotoInput(type="filepath", label="Photo", sources=["upload", "clipboard"], elem_id="photo",
                                       height=260)
                    if examples:
                        gr.Examples(examples, inputs=image, label="Examples (click one)")
                    family = gr.Dropdown(service.families(), value=family0, label="Model family")
                    models = gr.CheckboxGroup(service.model_names(family0), value=service.model_names(family0),
                                              label="Models to compare")
                    cam = gr.Dropdown([(CAM_TITLES[m], m) for m in CAM_METHODS], value="gradcam", label="CAM method",
                                      elem_id="cam")
                    target = gr.Dropdown([PREDICTED] + service.class_choices(family0), value=PREDICTED,
                                         label="Target class", filterable=True)
                    run = gr.Button("Compare", variant="primary", elem_id="compare-button")
                    gr.Markdown("**Display** (instant, no model runs)")
                    stage = gr.Radio([ALL_STAGES, *STAGES], value=ALL_STAGES, label="Stage", elem_id="stage")
                    cmap = gr.Dropdown(list(COLORMAPS), value="jet", label="Colormap")
                    alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                    scale = gr.Radio([(v, k) for k, v in SCALE_MODES.items()], value="stage", label="Colour scale")
                    status = gr.Markdown(elem_id="status", label="Status")
                with gr.Column(scale=3):
                    table = gr.Markdown(label="Top-5 predictions")
                    cam_grid = gr.Image(label="Grad-CAM per stage (models in columns)", type="filepath",
                                        elem_id="cam-grid", interactive=False)
                    attention_grid = gr.Image(label="Native spatial attention (activation map where a model has none)",
                                              type="filepath", elem_id="attention-grid", interactive=False)
                    channels = gr.Image(label="Channel weights per stage (SE excitation, CBAM channel attention, "
                                              "SSA squeeze vector)", type="filepath", interactive=False)
                    gallery = gr.Gallery(label="Overlays (full view)", columns=4, height="auto", elem_id="overlays")
                    predictions = gr.JSON(label="Predictions (JSON)")
        with gr.Tab("Stage by stage"):
            gr.Markdown("One model, every block in order: its output shape, its attention (or activation) map "
                        "and the module's formula with this image's numbers. Run a comparison first.")
            with gr.Row():
                model_pick = gr.Dropdown(service.model_names(family0), value=(service.model_names(family0) or [None])[0],
                                         label="Model", elem_id="stage-model")
                show = gr.Button("Show every block", elem_id="stage-button")
            block_gallery = gr.Gallery(label="Blocks", columns=4, height="auto", elem_id="blocks")
            block_table = gr.Markdown(label="Blocks and formula", elem_id="block-table")
        with gr.Tab("Model zoo"):
            zoo = gr.Markdown("Loading the zoo…", elem_id="zoo")

        stats = gr.JSON(visible=False, label="server stats")
        stats_button = gr.Button(visible=False)

        # Filled when a page opens (not at start-up): counting the online models' FLOPs takes a moment.
        demo.load(service.zoo_markdown, None, zoo, api_name="zoo")
        display = [stage, cmap, alpha, scale]
        run.click(compare, [image, family, models, cam, target, *display],
                  [key, table, cam_grid, attention_grid, channels, gallery, predictions, status],
                  api_name="compare")
        for control in (stage, cmap, scale):
            control.change(rerender, [key, *display], [cam_grid, attention_grid, channels, gallery],
                           api_name=False, show_progress="hidden")
        alpha.release(rerender, [key, *display], [cam_grid, attention_grid, channels, gallery],
                      api_name="rerender", show_progress="hidden")
        family.change(on_family, family, [models, target], api_name=False)
        models.change(on_models, models, model_pick, api_name=False)
        show.click(stage_view, [key, model_pick, cmap, alpha], [block_gallery, block_table], api_name="stage_by_stage")
        stats_button.click(lambda: server_stats(service), None, stats, api_name="stats", queue=False)
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service()
    # Import the CAM and plotting libraries and load the default models while the server starts.
    threading.Thread(target=service.warm_up, name="warm-up", daemon=True).start()
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_UPLOAD_BYTES,
        show_error=True,
        allowed_paths=[str(ASSETS)],
    )


if __name__ == "__main__":
    main()
