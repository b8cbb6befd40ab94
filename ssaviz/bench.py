"""``python -m ssaviz bench``: what a comparison costs, next to what the networks themselves cost.

One process, one run: warm-up, then medians over repeats, at the family's
input size on a real photo. ``baseline_ms`` wires the same outputs with the
libraries out of the box (a hooked forward for the native maps, then a fresh
pytorch-grad-cam ``GradCAM`` per stage, each running its own forward and
backward) and renders them with the same code, so the ratio isolates the
design of the request.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BENCH_IMAGE = ROOT / "assets" / "coffee.jpg"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1000


def timed(fn, device: torch.device, repeats: int, warmup: int, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    return timed_together([fn], device, repeats, warmup, min_seconds)[0]


def timed_together(fns, device: torch.device, repeats: int, warmup: int, min_seconds: float = 0.0) -> list[float]:
    """Median times of several functions measured in turns, so that drift in the machine's
    speed (other load, clocks) affects each alike and their ratio stays fair.

    At least ``repeats`` turns, and more until ``min_seconds`` have passed: fast functions
    get enough samples for a stable median.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    _sync(device)
    times = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < repeats or time.perf_counter() - start < min_seconds:
        for fn, t in zip(fns, times):
            t.append(_time_once(fn, device))
    return [statistics.median(t) for t in times]


def baseline_request(models, image_path: Path, display_long_side: int):
    """Out-of-the-box wiring: a hooked forward, then one fresh GradCAM object per stage."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from .capture import capture_attention
    from .explain import Explanation, ModelResult, _predictions, image_blocks
    from .images import display_copy, load_image, model_input_size, to_tensor
    from .resnet import STAGES
    from .service import CachedResult, render_view

    image = load_image(image_path)
    results = []
    for name, model, card in models:
        size = model_input_size(*image.size, card.input_size)
        x = to_tensor(image, card.input_size, card.mean, card.std, size).to(next(model.parameters()).device)
        cap = capture_attention(model, x, card.attention)
        probs = cap.probs[0]
        top1 = int(probs.argmax())
        cams = {}
        for stage in STAGES:
            cam = GradCAM(model=model, target_layers=[getattr(model, stage)[-1]])
            cams[stage] = cam(input_tensor=x, targets=[ClassifierOutputTarget(top1)])[0]
            cam.activations_and_grads.release()
        blocks = image_blocks(cap, 0)
        results.append(ModelResult(name, card, _predictions(card, probs, np.argsort(-probs)[:5]),
                                   _predictions(card, probs, [top1])[0], blocks, cams, size))
    expl = Explanation(image, "gradcam", None, results, str(x.device), 0.0)
    display = display_copy(image, display_long_side)
    expl.image = display
    return render_view(CachedResult(expl, display, image.size))


def compare_breakdown(service, family: str, models, dev: torch.device, repeats: int, warmup: int) -> dict:
    """The parts of one compare request, each timed alone (in turns), so the next step is obvious."""
    from .explain import explain_image
    from .images import load_image
    from .render import channel_plot, render_grid, render_overlays
    from .resnet import STAGES
    from .service import Service, predictions_table

    _, cached = service.compare(BENCH_IMAGE, family)
    expl, small = cached.explanation, cached.thumbnail(224)
    image = load_image(BENCH_IMAGE)
    parts = {
        "decode the upload": lambda: load_image(BENCH_IMAGE),
        "networks: inputs, capture forwards, one backward each, CAM maps": lambda: explain_image(models, image),
        "two grids (overlay cells, legends, labels)": lambda: [
            render_grid(expl, kind, STAGES, "jet", 0.5, "stage", 224, models_as_columns=True, base=small)
            for kind in ("cam", "spatial")],
        "gallery: overlays at display size": lambda: render_overlays(expl, "cam", STAGES, "jet", 0.5, "stage",
                                                                     image=cached.display),
        "channel-weight plot": lambda: channel_plot(expl.models),
        "predictions, map statistics, tables": lambda: (Service.predictions(expl), predictions_table(expl)),
    }
    return dict(zip(parts, timed_together(list(parts.values()), dev, repeats, warmup)))


def batch_images(n: int) -> list[Image.Image]:
    """``n`` distinct 4:3 photos cut from the example images (so they batch together)."""
    sources = [Image.open(p).convert("RGB") for p in sorted((ROOT / "assets").glob("*.jpg"))]
    images = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw = min(w, h * 4 // 3) - (i // len(sources)) * 8
        ch = cw * 3 // 4
        left, top = (w - cw) // 2 + (i % 3), (h - ch) // 2
        img = src.crop((left, top, left + cw, top + ch)).resize((480, 360), Image.BILINEAR)
        images.append(img.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else img)
    return images


def cold_start_seconds(env_extra: dict, timeout: float = 120.0) -> float:
    """From starting ``python app.py`` to the first compare request answered."""
    import socket
    import urllib.request

    from gradio_client import Client, handle_file  # imported before the clock starts

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", **env_extra}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        while True:
            if proc.poll() is not None:
                raise RuntimeError("app.py exited during start-up")
            try:
                urllib.request.urlopen(url + "config", timeout=1)
                break
            except OSError:
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError("app.py did not start") from None
                time.sleep(0.05)
        # The answer counts, not the client fetching the result images afterwards.
        Client(url, verbose=False, download_files=False).predict(handle_file(str(BENCH_IMAGE)), api_name="/compare")
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def run_bench(family: str | None = None, device: str | None = None, repeats: int = 10, warmup: int = 3,
              batch: int = 64, cold_start: bool = True) -> dict:
    from .capture import capture_attention, model_calls
    from .device import resolve_device
    from .explain import explain_images, explanation_summary
    from .files import ImageFiles
    from .images import load_image, model_input_size, to_tensor
    from .service import ResultCache, Service

    dev = resolve_device(device)
    service = Service(device=str(dev))
    family = family or service.default_family()
    if family is None:
        raise SystemExit("ssaviz bench: the zoo is empty")
    names = service.model_names(family)
    models = [(n, *service.store.get(n)) for n in names]
    image = load_image(BENCH_IMAGE)

    out: dict = {"family": family, "models": names, "image": f"{BENCH_IMAGE.name} {image.size[0]}x{image.size[1]}",
                 "device": str(dev), "device_name": _device_name(dev), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup,
                 "forward_ms": {}, "fwdbwd_ms": {}, "capture_ms": {}}
    fwdbwds = []
    for name, model, card in models:
        size = model_input_size(*image.size, card.input_size)
        x = to_tensor(image, card.input_size, card.mean, card.std, size).to(dev)
        out.setdefault("input_size", {})[name] = list(size)

        def forward(model=model, x=x):
            with torch.inference_mode():
                model(x)

        def fwdbwd(model=model, x=x):  # bound now: it is called after the loop
            logits = model(x)
            logits[0, logits[0].argmax()].backward()
            model.zero_grad(set_to_none=True)

        def capture(model=model, x=x, attention=card.attention):
            capture_attention(model, x, attention)

        # Forward and capture in turns: their ratio is a target.
        out["forward_ms"][name], out["capture_ms"][name] = timed_together(
            [forward, capture], dev, 3 * repeats, warmup, min_seconds=2.0)
        fwdbwds.append(fwdbwd)

    def compare():
        service.cache = ResultCache()  # a new request, not a cache hit
        key, _ = service.compare(BENCH_IMAGE, family)
        service.render(key)

    def baseline():
        baseline_request(models, BENCH_IMAGE, 640)

    # Rounds of: a request, the baseline, then each network's fwd+bwd several times in a row. The
    # ratios are fair to drift in the machine's speed, and the networks are timed mostly warm
    # (the lowest, strictest figure for them).
    for fn in [compare, baseline, *fwdbwds] * warmup:
        fn()
    runs: dict = {"compare": [], "baseline": [], **{n: [] for n in names}}
    for _ in range(repeats):
        runs["compare"].append(_time_once(compare, dev))
        runs["baseline"].append(_time_once(baseline, dev))
        for name, fwdbwd in zip(names, fwdbwds):
            runs[name] += [_time_once(fwdbwd, dev) for _ in range(5)]
    out["compare_ms"], out["baseline_ms"] = statistics.median(runs["compare"]), statistics.median(runs["baseline"])
    out["fwdbwd_ms"] = {n: statistics.median(runs[n]) for n in names}

    out["breakdown_ms"] = compare_breakdown(service, family, models, dev, repeats, warmup)

    key, _ = service.compare(BENCH_IMAGE, family)
    # Mostly changes that redraw the whole view (every stage), as a moving opacity slider does.
    settings = [("all", "viridis", 0.6, "map"), ("layer2", "jet", 0.5, "stage"), ("all", "turbo", 0.4, "shared"),
                ("all", "jet", 0.45, "stage")]
    calls = model_calls()
    counter = iter(range(10**9))
    out["rerender_ms"] = timed(lambda: service.render(key, *settings[next(counter) % len(settings)]), dev,
                               2 * repeats, warmup)
    out["rerender_model_calls"] = model_calls() - calls

    # Not part of the request's cost above: the web app then writes the view's pictures as JPEG files.
    view = service.render(key)
    with tempfile.TemporaryDirectory() as tmp:
        files = ImageFiles(Path(tmp))
        pictures = [view.cam_grid, view.attention_grid, view.channels, *(img for img, _ in view.gallery)]
        out["encode_ms"] = timed(lambda: [files.save(p) for p in pictures], dev, repeats, warmup)
        out["view_bytes"] = sum(Path(files.save(p)).stat().st_size for p in pictures)  # what a browser fetches

    images = batch_images(batch)
    explain_images(models, images[:16])  # warm-up at the batch shape
    _sync(dev)
    t0 = time.perf_counter()
    for expl in explain_images(models, images, batch_size=16):
        explanation_summary(expl)
    _sync(dev)
    out["batch_images"] = batch
    out["images_per_s"] = batch / (time.perf_counter() - t0)

    out["cold_start_s"] = None
    if cold_start:
        try:
            env = {k: v for k, v in os.environ.items() if k.startswith("SSAVIZ_")}
            out["cold_start_s"] = cold_start_seconds(env)
        except ImportError:
            out["cold_start_note"] = "gradio is not installed here"

    out["capture_over_forward"] = max(out["capture_ms"][n] / out["forward_ms"][n] for n in names)
    out["compare_over_fwdbwd"] = out["compare_ms"] / sum(out["fwdbwd_ms"].values())
    out["compare_over_baseline"] = out["compare_ms"] / out["baseline_ms"]
    return out


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    from .train import hardware_name

    return hardware_name(dev) + f", {os.cpu_count()} cores, {platform.machine()}"


TARGETS = {"capture_over_forward": 1.10, "compare_over_fwdbwd": 2.0, "compare_over_baseline": 0.5,
           "rerender_ms": 50.0, "cold_start_s": 10.0}


def format_table(r: dict) -> str:
    lines = [f"ssaviz bench · family {r['family']} · {r['device_name']} · torch {r['torch']} · "
             f"{r['threads']} threads · {r['image']} · medians of ≥ {r['repeats']} turns", "",
             "| model | input | forward ms | fwd+bwd ms | capture ms | capture/forward |",
             "|---|---|---|---|---|---|"]
    for n in r["models"]:
        w, h = r["input_size"][n]
        lines.append(f"| {n} | {w}x{h} | {r['forward_ms'][n]:.2f} | {r['fwdbwd_ms'][n]:.2f} | "
                     f"{r['capture_ms'][n]:.2f} | {r['capture_ms'][n] / r['forward_ms'][n]:.3f} |")
    lines += ["", "| measure | value | target |", "|---|---|---|"]
    rows = [("compare_ms", r["compare_ms"], None), ("baseline_ms", r["baseline_ms"], None),
            ("rerender_ms", r["rerender_ms"], "≤ 50"), ("rerender_model_calls", r["rerender_model_calls"], "0"),
            ("cold_start_s", r["cold_start_s"], "≤ 10"), ("images_per_s", r["images_per_s"], None),
            ("encode_ms", r.get("encode_ms"), None), ("view_bytes", r.get("view_bytes"), None),
            ("capture_over_forward", r["capture_over_forward"], "≤ 1.10"),
            ("compare_over_fwdbwd", r["compare_over_fwdbwd"], "≤ 2.0"),
            ("compare_over_baseline", r["compare_over_baseline"], "≤ 0.5")]
    for key, value, target in rows:
        digits = 3 if key.endswith(("_over_forward", "_over_fwdbwd", "_over_baseline")) else 2
        shown = "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        if key == "images_per_s":
            key = f"images_per_s ({r['batch_images']} images)"
        if key == "encode_ms":
            key = "encode_ms (app only: the view's JPEG files)"
        if key == "view_bytes":
            key = "view_bytes (those files, all stages)"
        lines.append(f"| {key} | {shown} | {target or ''} |")
    if r.get("breakdown_ms"):
        total = sum(r["breakdown_ms"].values())
        lines += ["", "| part of a compare request (each timed alone) | ms | share |", "|---|---|---|"]
        lines += [f"| {part} | {ms:.1f} | {ms / total:.0%} |" for part, ms in r["breakdown_ms"].items()]
    return "\n".join(lines)


def _cmd_bench(args) -> int:
    if args.show:  # the tables of a saved run
        print(format_table(json.loads(Path(args.show).read_text())))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_bench(args.family, args.device, args.repeats, args.warmup, args.batch, not args.no_cold_start)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.profile:
        _profile(args.family, args.device, args.profile)
    return 0


def _profile(family, device, out_path: str) -> None:
    """cProfile of compare requests: which functions the remaining time goes to."""
    import cProfile
    import io
    import pstats

    from .service import ResultCache, Service

    service = Service(device=device)
    family = family or service.default_family()
    service.compare(BENCH_IMAGE, family)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        service.cache = ResultCache()
        key, _ = service.compare(BENCH_IMAGE, family)
        service.render(key)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    Path(out_path).write_text(text.getvalue())
    print(f"profile of 5 compare requests written to {out_path}")


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure capture, compare, re-render and cold start")
    p.add_argument("--json", help="write all measurements here")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--family", help="model family (default: the first local one)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=64, help="images for the images-per-second measure")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-cold-start", action="store_true", help="skip starting the app")
    p.add_argument("--profile", metavar="FILE", help="also write a cProfile of compare requests")
    p.add_argument("--show", metavar="JSON", help="print the tables of a run saved with --json, and stop")
    p.set_defaults(func=_cmd_bench)
