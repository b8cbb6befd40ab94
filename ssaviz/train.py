"""Train and evaluate the zoo's networks: ``python -m ssaviz train`` / ``evaluate``.

One process, or several under ``torchrun`` (DistributedDataParallel, NCCL on
GPUs and gloo on CPUs). The data set is decoded once into memory (GPU memory
when training there) and augmented a batch at a time on the device.
"""

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoints import IMAGENET_MEAN, IMAGENET_STD, ModelCard, build_model, load_checkpoint, save_checkpoint, write_card
from .data import augment, center_view, load_dataset, normalise
from .errors import SsavizError
from .resnet import attention_parameters, count_flops


@dataclass
class TrainConfig:
    attention: str = "ssa"
    dataset: str = "imagenette"
    family: str = ""  # card's family name; empty: the dataset's
    depth: int = 50
    width: float = 0.25
    stem: str = "imagenet"
    decode_size: int = 144  # images are decoded once at this size
    train_size: int = 128  # random-resized crops of this size
    eval_size: int = 160  # the card's input size
    crop_scale: tuple[float, float] = (0.25, 1.0)
    epochs: int = 40
    batch_size: int = 128  # global, over all processes
    lr: float = 0.25
    warmup_epochs: float = 2.0
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    optimizer: str = "sgd"  # sgd (Nesterov) or adamw
    seed: int = 0
    max_steps: int = 0  # stop after this many steps (0: no limit), for smoke tests
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


PRESETS = {
    # The default family: a quarter-width ResNet-50 (under 4 MiB in fp16), trained at 128 px on a GPU.
    "imagenette": TrainConfig(),
    # A small family that trains on a 2-core CPU in minutes: ResNet-18 at a quarter width, 80 px.
    "imagenette-cpu": TrainConfig(family="imagenette-cpu-preview", depth=18, width=0.25, decode_size=96,
                                  train_size=80, eval_size=96, epochs=18, batch_size=64, lr=0.1,
                                  warmup_epochs=1.0, crop_scale=(0.3, 1.0)),
    "cifar10": TrainConfig(dataset="cifar10", depth=18, width=0.5, stem="small", decode_size=32, train_size=32,
                           eval_size=32, crop_scale=(0.5, 1.0), epochs=30, batch_size=256, lr=0.2,
                           mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
}


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero, per step."""
    total = cfg.epochs * steps_per_epoch
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return cfg.lr * (0.1 + 0.9 * step / warm)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on norms, biases and the attention BNs (1-d parameters).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, data, cfg_mean, cfg_std, size: int, device: torch.device,
                   batch_size: int = 256) -> dict:
    """Top-1 and top-5 of ``model`` on an in-memory data set (images already at ``size``)."""
    model.eval()
    correct1 = correct5 = 0
    n = len(data)
    for i in range(0, n, batch_size):
        x = normalise(data.images[i:i + batch_size].to(device, non_blocking=True), cfg_mean, cfg_std)
        x = center_view(x, size)
        y = data.labels[i:i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
    return {"top1": correct1 / n, "top5": correct5 / n, "n": n}


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SSAVIZ_DEVICE") != "cpu" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def train(cfg: TrainConfig, data_path: Path, out_dir: Path, name: str, val_path: Path | None = None,
          device: str | None = None, resume: bool = False, progress: bool = True) -> Path | None:
    """Train one network; returns the checkpoint path (on rank 0)."""
    from .device import resolve_device

    rank, world, local = _distributed()
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = rank == 0

    t0 = time.time()
    train_set = load_dataset(data_path, cfg.decode_size)
    val_set = load_dataset(val_path, cfg.eval_size, class_ids=train_set.class_ids) if val_path and main else None
    images = train_set.images.to(dev)  # decoded once; on a GPU it lives in GPU memory
    labels = train_set.labels.to(dev)
    if main:
        print(f"decoded {len(train_set)} training images in {time.time() - t0:.1f}s on {dev}", file=sys.stderr)

    card = ModelCard(name=name, dataset=cfg.dataset, class_ids=train_set.class_ids,
                     class_names=train_set.class_names, attention=cfg.attention, depth=cfg.depth,
                     width=cfg.width, stem=cfg.stem, input_size=cfg.eval_size, mean=list(cfg.mean),
                     std=list(cfg.std))
    model = build_model(card).to(dev)
    memory_format = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)

    state_path = out_dir / f"{name}.train.pt"
    start_epoch = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        if main:
            print(f"resumed {name} after epoch {start_epoch}", file=sys.stderr)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if dev.type == "cuda" else None)

    per_rank = max(1, cfg.batch_size // world)
    steps_per_epoch = len(train_set) // (per_rank * world)
    if steps_per_epoch == 0:
        raise SsavizError(f"batch size {cfg.batch_size} is larger than the data set ({len(train_set)} images)")
    log_path = out_dir / f"{name}.log.csv"
    if main and not (resume and log_path.exists()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "seconds"])
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
    step = start_epoch * steps_per_epoch
    train_seconds = 0.0
    amp = dev.type == "cuda"
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        e0 = time.time()
        # Same permutation on every rank (seeded by epoch), each rank takes its slice.
        perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        perm = perm[: steps_per_epoch * per_rank * world].view(steps_per_epoch, world, per_rank)[:, rank]
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        seen = 0
        bar = None
        if main and progress:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"{name} {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not sys.stderr.isatty() and os.environ.get("SSAVIZ_PROGRESS") != "1")
        for idx in perm:
            idx = idx.to(dev)
            lr = lr_at(step, steps_per_epoch, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            x = augment(normalise(images[idx], cfg.mean, cfg.std), cfg.train_size, gen, cfg.crop_scale)
            x = x.contiguous(memory_format=memory_format)
            y = labels[idx]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            step += 1
            if bar:
                bar.update(1)
            if cfg.max_steps and step >= cfg.max_steps:
                break
        if bar:
            bar.close()
        if world > 1:
            stats = torch.stack([loss_sum, correct, torch.tensor(float(seen), device=dev)])
            dist.all_reduce(stats)
            loss_sum, correct, seen = stats[0], stats[1], int(stats[2].item())
        train_seconds += time.time() - e0
        val = evaluate_model(model, val_set, cfg.mean, cfg.std, cfg.eval_size, dev) if val_set is not None else {}
        if main:
            row = [epoch + 1, f"{lr:.5f}", f"{(loss_sum / seen).item():.4f}", f"{(correct / seen).item():.4f}",
                   f"{val.get('top1', float('nan')):.4f}", f"{val.get('top5', float('nan')):.4f}",
                   f"{time.time() - e0:.1f}"]
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow(row)
            print(f"{name} epoch {epoch + 1}/{cfg.epochs}: loss {row[2]} train {row[3]} val {row[4]} "
                  f"({row[6]}s)", file=sys.stderr)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1},
                       state_path)
        if cfg.max_steps and step >= cfg.max_steps:
            break

    if world > 1:
        dist.barrier()
    path = None
    if main:
        model = model.to(memory_format=torch.contiguous_format).float().eval()
        final = evaluate_model(model, val_set, cfg.mean, cfg.std, cfg.eval_size, dev) if val_set is not None else {}
        cpu_model = model.cpu()
        card.parameters = sum(p.numel() for p in cpu_model.parameters())
        card.attention_parameters = attention_parameters(cpu_model)
        card.flops = count_flops(cpu_model, cfg.eval_size)
        card.hardware = f"{hardware_name(dev)}" + (f" x{world}" if world > 1 else "")
        card.date = dt.date.today().isoformat()
        recipe = {k: v for k, v in asdict(cfg).items() if k not in ("mean", "std", "max_steps")}
        recipe.update(train_data=Path(data_path).name, train_images=len(train_set), steps=step,
                      training_seconds=round(train_seconds, 1), processes=world,
                      augmentation=f"random-resized-crop {cfg.crop_scale} + flip at {cfg.train_size}px",
                      schedule="linear warm-up then cosine, per step", precision="bf16 autocast" if amp else "fp32")
        card.recipe = recipe
        if final:
            card.accuracy = {**final, "data": Path(val_path).name, "input_size": cfg.eval_size}
        if cfg.dataset == "imagenette":
            card.license = ("Trained on Imagenette, a subset of ImageNet: for non-commercial research and "
                            "education only.")
        card.family = cfg.family
        path = save_checkpoint(cpu_model, card, out_dir)
        print(json.dumps({"checkpoint": str(path), "accuracy": card.accuracy}), file=sys.stderr)
    if dist.is_initialized():
        dist.destroy_process_group()
    return path


def evaluate_checkpoint(name_or_path: str, data_path: Path, device: str | None = None,
                        batch_size: int = 256) -> tuple[dict, ModelCard, Path | None]:
    from .device import resolve_device
    from .zoo import discover

    dev = resolve_device(device)
    candidate = Path(name_or_path)
    if candidate.suffix == ".safetensors" or candidate.exists():
        path = candidate if candidate.suffix == ".safetensors" else candidate.with_suffix(".safetensors")
        from .checkpoints import read_card

        card = read_card(path.with_suffix(".json"))
        model = load_checkpoint(path, card, device=dev)
    else:
        entry = discover().get(name_or_path)
        path = entry.path
        if entry.online:
            from .online import load_online

            model, card = load_online(entry.name, device=dev)
        else:
            card = entry.card
            model = load_checkpoint(path, card, device=dev)
    data = load_dataset(data_path, card.input_size, class_ids=card.class_ids)
    result = evaluate_model(model, data, card.mean, card.std, card.input_size, dev, batch_size)
    return result, card, path


# ---- command line -------------------------------------------------------------------

def _cmd_train(args) -> int:
    cfg = PRESETS[args.preset]
    overrides = {k: getattr(args, k) for k in ("depth", "width", "epochs", "batch_size", "lr", "seed",
                                                "train_size", "eval_size", "max_steps", "optimizer")
                 if getattr(args, k) is not None}
    cfg = replace(cfg, attention=args.attention, **overrides)
    if args.family:
        cfg = replace(cfg, family=args.family)
    name = args.name or f"{cfg.dataset}_{cfg.attention}_s{cfg.seed}"
    train(cfg, Path(args.data), Path(args.out), name, Path(args.val) if args.val else None, args.device,
          resume=args.resume)
    return 0


def _cmd_evaluate(args) -> int:
    result, card, path = evaluate_checkpoint(args.model, Path(args.data), args.device, args.batch_size)
    print(f"{card.name}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  on {result['n']} images "
          f"of {Path(args.data).name} at {card.input_size}px")
    if args.json:
        Path(args.json).write_text(json.dumps(result) + "\n")
    if args.update_card:
        if path is None:
            raise SsavizError(f"{card.name} is an online entry: it has no card file to update")
        card.accuracy = {**result, "data": Path(args.data).name, "input_size": card.input_size}
        write_card(card, path.with_suffix(".json"))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    from .layers import ATTENTION_TYPES

    p = sub.add_parser("train", help="train one network (torchrun for several processes)")
    p.add_argument("--attention", required=True, choices=list(ATTENTION_TYPES))
    p.add_argument("--data", required=True, help="training images: ImageFolder directory or ZIP")
    p.add_argument("--val", help="validation images (ImageFolder or ZIP), evaluated every epoch")
    p.add_argument("--preset", default="imagenette", choices=list(PRESETS))
    p.add_argument("--out", default="runs", help="directory for the checkpoint, card, CSV log and state")
    p.add_argument("--name", help="checkpoint name (default: DATASET_ATTENTION_sSEED)")
    p.add_argument("--family", help="family name written to the card")
    for flag, kind in (("--depth", int), ("--width", float), ("--epochs", int), ("--batch-size", int),
                       ("--lr", float), ("--seed", int), ("--train-size", int), ("--eval-size", int),
                       ("--max-steps", int)):
        p.add_argument(flag, type=kind)
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from NAME.train.pt in --out")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="top-1/top-5 of a checkpoint on labelled images")
    p.add_argument("model", help="zoo name or path to NAME.safetensors")
    p.add_argument("--data", required=True, help="ImageFolder directory or ZIP with class-id folders")
    p.add_argument("--json", help="write {top1, top5, n} here")
    p.add_argument("--update-card", action="store_true", help="write the measured numbers into the card")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", help="cpu or cuda")
    p.set_defaults(func=_cmd_evaluate)
