"""Command line: ``python -m ssaviz models|explain|train|evaluate|bench``.

A user's mistake (bad image, unknown model, no network) exits non-zero with
one line on stderr and no traceback; SSAVIZ_DEBUG=1 shows tracebacks.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import SsavizError


def _cmd_models(args) -> int:
    from .zoo import discover

    zoo = discover()
    rows = [e.summary() for e in zoo.entries.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(models_markdown(zoo))
    else:
        if not rows:
            print("the zoo is empty")
        for r in rows:
            acc = r["accuracy"].get("top1") if r["accuracy"] else None
            acc = f"top-1 {acc:.2%}" if isinstance(acc, (int, float)) else ""
            where = r["path"] or r["status"]
            print(f"{r['family']:<14} {r['name']:<24} {r['attention']:<8} {r['classes']:>5} classes  {acc:<13} {where}")
    for problem in zoo.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def models_markdown(zoo) -> str:
    """The local checkpoints as a Markdown table, every number read from the cards."""
    lines = ["| model | family | attention | input | top-1 | top-5 | val images | parameters | "
             "added by attention | GFLOPs | trained on | date |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in zoo.entries.values():
        if e.online:
            continue
        c, acc = e.card, e.card.accuracy or {}
        pct = lambda v: f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "—"  # noqa: E731
        secs = c.recipe.get("training_seconds")
        lines.append(
            f"| {e.name} | {e.family} | {c.attention} | {c.input_size}px | {pct(acc.get('top1'))} | "
            f"{pct(acc.get('top5'))} | {acc.get('n', '—')} ({acc.get('data', '')}) | {c.parameters or '—':,} | "
            f"{c.attention_parameters if c.attention_parameters is not None else '—':,} | "
            f"{(c.flops or 0) / 1e9:.3f} | {c.hardware}{f', {secs / 60:.1f} min' if secs else ''} | {c.date} |")
    return "\n".join(lines)


def _select_models(zoo, family: str | None, names: str | None):
    if names:
        entries = [zoo.get(n.strip()) for n in names.split(",") if n.strip()]
        fams = {e.family for e in entries}
        if len(fams) > 1:
            raise SsavizError(f"models of different families cannot be compared: {', '.join(sorted(fams))}")
        return entries
    family = family or zoo.default_family()
    if family is None:
        raise SsavizError("the zoo is empty: no checkpoints in checkpoints/ or $SSAVIZ_CHECKPOINTS "
                          "(the online ImageNet models need --family imagenet-1k and a network connection)")
    return zoo.family(family)


def _parse_target(target: str | None, card) -> int | None:
    if target is None:
        return None
    if target in card.class_ids:
        return card.class_ids.index(target)
    lowered = [n.lower() for n in card.class_names]
    if target.lower() in lowered:
        return lowered.index(target.lower())
    if target.isdigit() and int(target) < len(card.class_ids):
        return int(target)
    raise SsavizError(f"unknown target class {target!r} for {card.dataset} "
                      f"(give a class id, a class name or an index below {len(card.class_ids)})")


def _cmd_explain(args) -> int:
    from .device import resolve_device
    from .images import load_image
    from .zoo import ModelStore, discover

    device = resolve_device(args.device)
    out = Path(args.out)
    zoo = discover()
    for problem in zoo.problems:
        print(f"warning: {problem}", file=sys.stderr)
    entries = _select_models(zoo, args.family, args.models)
    # Decode every image first: a bad file stops the run before any model runs.
    images = [(Path(p), load_image(p)) for p in args.images]
    store = ModelStore(zoo, device)
    models = [(e.name, *store.get(e.name)) for e in entries]
    target = _parse_target(args.target, models[0][2])
    out.mkdir(parents=True, exist_ok=True)
    from .explain import explain_images, explanation_summary
    from .render import channel_plot, render_grid, render_overlays

    explanations = explain_images(models, [img for _, img in images], args.cam, target, args.batch_size)
    for (path, _), expl in zip(images, explanations):
        stem = path.stem
        written = []
        for kind in ("cam", "spatial"):
            grid = render_grid(expl, kind, cmap=args.colormap, alpha=args.alpha, mode=args.scale)
            name = out / f"{stem}_{args.cam if kind == 'cam' else 'attention'}_grid.png"
            grid.save(name)
            written.append(name.name)
        if args.overlays:  # full resolution, for export
            for kind in ("cam", "spatial"):
                for (model, stage), img in render_overlays(expl, kind, cmap=args.colormap, alpha=args.alpha,
                                                           mode=args.scale).items():
                    name = f"{stem}_{model}_{stage}_{args.cam if kind == 'cam' else 'attention'}.png"
                    img.save(out / name)
                    written.append(name)
        plot = channel_plot(expl.models)
        if plot is not None:
            plot.save(out / f"{stem}_channels.png")
            written.append(f"{stem}_channels.png")
        summary = explanation_summary(expl)
        summary["image"] = str(path)
        summary["files"] = written
        (out / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
        top = ", ".join(f"{r.name}: {r.predictions[0].name} ({r.predictions[0].prob:.2f})" for r in expl.models)
        print(f"{path.name}: {top}  [{expl.device}] -> {out}/{stem}.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ssaviz", description="See what attention modules in CNNs do.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--markdown", action="store_true", help="print the local checkpoints as a Markdown table")
    p.set_defaults(func=_cmd_models)

    from .cams import CAM_METHODS
    from .render import COLORMAPS, SCALE_MODES

    p = sub.add_parser("explain", help="attention maps and CAMs for images, as PNG grids and JSON")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--models", help="comma-separated model names (one family)")
    p.add_argument("--family", help="model family (default: the first local one)")
    p.add_argument("--cam", default="gradcam", choices=list(CAM_METHODS))
    p.add_argument("--target", help="class to explain (id, name or index; default: each model's top-1)")
    p.add_argument("--device", help="cpu or cuda (default: SSAVIZ_DEVICE, else cuda when available)")
    p.add_argument("--colormap", default="jet", choices=list(COLORMAPS))
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity, 0..1")
    p.add_argument("--scale", default="stage", choices=list(SCALE_MODES), help="colour-scale mode")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward (same aspect ratio batch)")
    p.add_argument("--overlays", action="store_true",
                   help="also write every model's and stage's overlay at the image's full resolution")
    p.set_defaults(func=_cmd_explain)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    from . import bench, train

    return [train.register_cli, bench.register_cli]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")
    debug = os.environ.get("SSAVIZ_DEBUG") == "1"
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SsavizError as error:
        if debug:
            raise
        print(f"ssaviz: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssaviz: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: still one line, unless debugging
        if debug:
            raise
        print(f"ssaviz: internal error: {type(error).__name__}: {error} (SSAVIZ_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
