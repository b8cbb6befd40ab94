"""Write untrained checkpoints of a zoo architecture, for benchmarks: same compute, no training.

    python scripts/make_untrained_family.py --out /tmp/untrained            # the default family's layout
    SSAVIZ_BUNDLED=0 SSAVIZ_CHECKPOINTS=/tmp/untrained python -m ssaviz bench

Speed does not depend on the weights' values, so this measures the default
family's architecture (ResNet-50 at a quarter width, 160 px) before its trained
weights exist, or on a machine without them.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssaviz.checkpoints import ModelCard, save_checkpoint  # noqa: E402
from ssaviz.data import KNOWN_CLASS_NAMES  # noqa: E402
from ssaviz.layers import ATTENTION_TYPES  # noqa: E402
from ssaviz.resnet import attention_parameters, build_resnet, count_flops  # noqa: E402
from ssaviz.train import PRESETS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="imagenette", choices=list(PRESETS))
    parser.add_argument("--depth", type=int)
    parser.add_argument("--width", type=float)
    parser.add_argument("--input-size", type=int)
    args = parser.parse_args()
    cfg = PRESETS[args.preset]
    depth, width = args.depth or cfg.depth, args.width or cfg.width
    size = args.input_size or cfg.eval_size
    ids = list(KNOWN_CLASS_NAMES)
    for attention in ATTENTION_TYPES:
        torch.manual_seed(0)
        model = build_resnet(depth, attention, width, cfg.stem, len(ids)).eval()
        card = ModelCard(name=f"untrained{depth}_{attention}", dataset="imagenette", family="untrained",
                         class_ids=ids, class_names=[KNOWN_CLASS_NAMES[i] for i in ids], attention=attention,
                         depth=depth, width=width, stem=cfg.stem, input_size=size,
                         parameters=sum(p.numel() for p in model.parameters()),
                         attention_parameters=attention_parameters(model), flops=count_flops(model, size),
                         notes="Untrained (random) weights, for speed measurements only.")
        print(save_checkpoint(model, card, Path(args.out)))


if __name__ == "__main__":
    main()
