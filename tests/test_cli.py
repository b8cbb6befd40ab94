import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_cli(*args, env_extra=None, tmp_env=None):
    env = {**os.environ, "SSAVIZ_BUNDLED": "0", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ssaviz", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, text):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert text in lines[0]


def test_models_json_lists_the_zoo(tiny_zoo):
    proc = run_cli("models", "--json", env_extra={"SSAVIZ_CHECKPOINTS": str(tiny_zoo)})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    local = [r for r in rows if not r["online"]]
    assert {r["attention"] for r in local} == {"none", "se", "ssa", "salient", "cbam"}
    for r in rows:
        assert {"name", "family", "attention", "classes", "path"} <= r.keys()
    assert all(r["family"] == "imagenette" and r["classes"] == 10 for r in local)


def test_explain_end_to_end(tiny_zoo, photo_path, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("explain", photo_path, "--out", out, "--cam", "gradcam++",
                   env_extra={"SSAVIZ_CHECKPOINTS": str(tiny_zoo)})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "coffee.json").read_text())
    assert set(summary["models"]) == {"tiny_none", "tiny_se", "tiny_ssa", "tiny_salient", "tiny_cbam"}
    for m in summary["models"].values():
        assert len(m["predictions"]) == 5
        assert set(m["stages"]) == {"layer1", "layer2", "layer3", "layer4"}
        for stage in m["stages"].values():
            assert stage["cam"]["max"] >= stage["cam"]["min"] >= 0
            assert (stage["spatial"] is not None) == (m["attention"] in ("ssa", "salient", "cbam"))
            assert (stage["channel"] is not None) == (m["attention"] in ("se", "ssa", "cbam"))
    assert summary["models"]["tiny_se"]["stages"]["layer4"]["channel"]["n"] == 64
    for f in summary["files"]:
        assert (out / f).stat().st_size > 1000
    assert "coffee_gradcam++_grid.png" in summary["files"]


def test_explain_with_target_and_models(tiny_zoo, photo_path, tmp_path):
    proc = run_cli("explain", photo_path, "--out", tmp_path, "--models", "tiny_ssa,tiny_none",
                   "--target", "church", "--device", "cpu", "--overlays", env_extra={"SSAVIZ_CHECKPOINTS": str(tiny_zoo)})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "coffee.json").read_text())
    from PIL import Image

    with Image.open(tmp_path / "coffee_tiny_ssa_layer3_gradcam.png") as full:
        assert full.size == (600, 400)  # export at the photo's full resolution
    assert (tmp_path / "coffee_tiny_none_layer1_attention.png").exists()
    assert set(summary["models"]) == {"tiny_ssa", "tiny_none"}
    assert all(m["target"]["name"] == "church" for m in summary["models"].values())


@pytest.mark.parametrize("case,text", [
    ("missing", "no such file"),
    ("notimage", "not an image"),
    ("empty", "the file is empty"),
])
def test_explain_bad_input_is_one_line(case, text, tiny_zoo, tmp_path):
    path = tmp_path / f"{case}.jpg"
    if case == "notimage":
        path.write_text("hello, this is text")
    elif case == "empty":
        path.write_bytes(b"")
    proc = run_cli("explain", path, "--out", tmp_path / "o", env_extra={"SSAVIZ_CHECKPOINTS": str(tiny_zoo)})
    assert_one_line_error(proc, text)


def test_explain_on_an_empty_zoo_says_so(photo_path, tmp_path):
    proc = run_cli("explain", photo_path, "--out", tmp_path, env_extra={"SSAVIZ_CHECKPOINTS": str(tmp_path)})
    assert_one_line_error(proc, "the zoo is empty")


def test_unknown_model_and_device(tiny_zoo, photo_path, tmp_path):
    env = {"SSAVIZ_CHECKPOINTS": str(tiny_zoo)}
    assert_one_line_error(run_cli("explain", photo_path, "--out", tmp_path, "--models", "nope", env_extra=env),
                          "no model 'nope'")
    assert_one_line_error(run_cli("explain", photo_path, "--out", tmp_path, "--device", "tpu", env_extra=env),
                          "unknown device")


def odd_images(directory):
    """One file per odd-but-valid kind of image."""

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8))
    files = {}
    rgb.convert("CMYK").save(files.setdefault("cmyk", directory / "cmyk.jpg"))
    Image.frombytes("I;16", (90, 120), rng.integers(0, 65535, (120, 90), dtype=np.uint16).tobytes()).save(
        files.setdefault("sixteen", directory / "sixteen.png"))
    rgb.convert("P").save(files.setdefault("palette", directory / "palette.gif"))
    rgb.convert("RGBA").save(files.setdefault("rgba", directory / "rgba.png"))
    rgb.convert("L").save(files.setdefault("grey", directory / "grey.bmp"))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(files.setdefault("rotated", directory / "rotated.jpg"), exif=exif.tobytes())
    Image.new("RGB", (2000, 3), "green").save(files.setdefault("thin", directory / "thin.webp"))
    Image.new("RGB", (1, 1), "blue").save(files.setdefault("tiny", directory / "tiny.tiff"))
    return files


def test_explain_accepts_every_odd_but_valid_kind(tiny_zoo, tmp_path):
    files = odd_images(tmp_path)
    out = tmp_path / "out"
    proc = run_cli("explain", *files.values(), "--out", out, "--models", "tiny_ssa,tiny_se",
                   env_extra={"SSAVIZ_CHECKPOINTS": str(tiny_zoo)})
    assert proc.returncode == 0, proc.stderr
    for kind, path in files.items():
        summary = json.loads((out / f"{path.stem}.json").read_text())
        assert set(summary["models"]) == {"tiny_ssa", "tiny_se"}, kind
    assert json.loads((out / "rotated.json").read_text())["image_size"] == [120, 90]  # upright
    assert json.loads((out / "thin.json").read_text())["models"]["tiny_ssa"]["input_size"] == [128, 64]


def test_explain_refuses_each_broken_kind_in_one_line(tiny_zoo, tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    photo = (ROOT / "assets" / "coffee.jpg").read_bytes()
    cases = {
        "empty.jpg": (b"", "empty"),
        "notes.png": (b"meeting notes, not a picture", "not an image"),
        "truncated.jpg": (photo[: len(photo) // 3], "damaged or truncated"),
        "bomb.png": (bomb, "million pixel limit"),
        "huge.png": (photo + b"\0" * (21 * 2**20), "over the 20 MB limit"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        proc = run_cli("explain", path, "--out", tmp_path / "o", env_extra={"SSAVIZ_CHECKPOINTS": str(tiny_zoo)})
        assert_one_line_error(proc, message)
