"""Training and evaluation, on tiny CPU runs."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssaviz.checkpoints import load_checkpoint, read_card
from ssaviz.data import augment, load_dataset
from ssaviz.train import PRESETS, lr_at
from tests.conftest import ROOT

SHARED = ROOT.parent / "shared" / "data"


def make_folder(root: Path, classes=("n01440764", "n02102040", "n03028079"), per_class=12, size=40):
    """Class folders of coloured images that a network can tell apart (colour = class)."""
    rng = np.random.default_rng(0)
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            arr[..., k] += 150
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def zip_folder(folder: Path, path: Path, split="train"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(folder.rglob("*.png")):
            z.write(f, f"{split}/{f.relative_to(folder)}")
    return path


def run(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SSAVIZ_DEVICE": "cpu", **(env or {})})


def test_zip_and_folder_give_the_same_data(tmp_path):
    folder = make_folder(tmp_path / "f")
    archive = zip_folder(folder, tmp_path / "d.zip")
    a, b = load_dataset(folder, 32), load_dataset(archive, 32)
    assert a.class_ids == b.class_ids == ["n01440764", "n02102040", "n03028079"]
    assert a.class_names == ["tench", "English springer", "church"]
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (36, 3, 32, 32) and a.images.dtype == torch.uint8


def test_augment_crops_and_flips_per_sample():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment(x.repeat(8, 1, 1, 1), 6, g)
    assert out.shape == (16, 3, 6, 6)
    assert len({tuple(o.flatten()[:4].tolist()) for o in out}) > 4  # each sample its own crop
    full = augment(x, 8, torch.Generator().manual_seed(1), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    # A full-size crop is the image itself, flipped or not.
    assert all(torch.allclose(f, xi, atol=1e-4) or torch.allclose(f, xi.flip(-1), atol=1e-4)
               for f, xi in zip(full, x))


def test_learning_rate_warms_up_then_decays():
    cfg = PRESETS["cifar10"]
    lrs = [lr_at(s, 10, cfg) for s in range(cfg.epochs * 10)]
    peak = int(cfg.warmup_epochs * 10)
    assert lrs[0] < lrs[peak - 1] <= cfg.lr and abs(lrs[peak] - cfg.lr) < 1e-9
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:])) and lrs[-1] < 0.01 * cfg.lr


def test_train_resume_and_evaluate_on_cpu(tmp_path):
    data = zip_folder(make_folder(tmp_path / "f"), tmp_path / "train.zip")
    out = tmp_path / "run"
    common = ["-m", "ssaviz", "train", "--attention", "ssa", "--preset", "cifar10", "--data", str(data),
              "--val", str(data), "--out", str(out), "--name", "toy", "--depth", "18", "--width", "0.125",
              "--batch-size", "12", "--lr", "0.05", "--train-size", "32", "--eval-size", "32"]
    first = run(*common, "--epochs", "2")
    assert first.returncode == 0, first.stderr
    log = (out / "toy.log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,lr,train_loss") and len(log) == 3
    resumed = run(*common, "--epochs", "4", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed toy after epoch 2" in resumed.stderr
    assert len((out / "toy.log.csv").read_text().splitlines()) == 5
    card = read_card(out / "toy.json")
    assert card.attention == "ssa" and card.recipe["epochs"] == 4 and card.parameters > 0
    assert 0 <= card.accuracy["top1"] <= 1 and card.accuracy["n"] == 36 and card.flops > 0
    model = load_checkpoint(out / "toy.safetensors")
    assert sum(p.numel() for n, p in model.named_parameters() if ".attn." in n) == 2 * 8
    proc = run("-m", "ssaviz", "evaluate", str(out / "toy.safetensors"), "--data", str(data),
               "--json", str(tmp_path / "eval.json"), "--update-card")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result) == {"top1", "top5", "n"} and result["n"] == 36
    assert read_card(out / "toy.json").accuracy["top1"] == result["top1"]


def test_evaluate_refuses_classes_the_model_does_not_know(tmp_path):
    data = zip_folder(make_folder(tmp_path / "f"), tmp_path / "train.zip")
    other = zip_folder(make_folder(tmp_path / "g", classes=("cat", "dog")), tmp_path / "other.zip")
    out = tmp_path / "run"
    proc = run("-m", "ssaviz", "train", "--attention", "none", "--preset", "cifar10", "--data", str(data),
               "--out", str(out), "--name", "m", "--depth", "18", "--width", "0.125", "--epochs", "1",
               "--batch-size", "12")
    assert proc.returncode == 0, proc.stderr
    proc = run("-m", "ssaviz", "evaluate", str(out / "m.safetensors"), "--data", str(other))
    assert proc.returncode == 2 and "not among the model's classes" in proc.stderr and "Traceback" not in proc.stderr


def test_two_process_distributed_training_with_gloo(tmp_path):
    data = zip_folder(make_folder(tmp_path / "f"), tmp_path / "train.zip")
    out = tmp_path / "ddp"
    proc = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ssaviz", "train",
               "--attention", "se", "--preset", "cifar10", "--data", str(data), "--out", str(out), "--name", "ddp",
               "--depth", "18", "--width", "0.125", "--batch-size", "12", "--epochs", "2", "--max-steps", "4",
               env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = read_card(out / "ddp.json")
    assert card.recipe["processes"] == 2 and card.recipe["steps"] == 4
    assert load_checkpoint(out / "ddp.safetensors") is not None


@pytest.mark.skipif(not (SHARED / "imagenette" / "val-224.zip").exists(), reason="shared data not present")
def test_reads_the_shared_imagenette_archive():
    data = load_dataset(SHARED / "imagenette" / "val-224.zip", 32, limit=40)
    assert len(data) == 40 and len(data.class_ids) <= 10
    assert all(c.startswith("n0") for c in data.class_ids)
