"""The real server, driven with gradio_client."""

import pytest
from gradio_client import Client, handle_file

from tests.conftest import ROOT
from tests.server import running_app

MODELS = ["tiny_cbam", "tiny_none", "tiny_salient", "tiny_se", "tiny_ssa"]


@pytest.fixture(scope="module")
def app(tiny_zoo):
    with running_app({"SSAVIZ_BUNDLED": "0", "SSAVIZ_CHECKPOINTS": str(tiny_zoo)}) as (url, proc):
        yield Client(url, verbose=False), proc


def compare(client, image, models=MODELS, cam="gradcam", stage="all"):
    return client.predict(handle_file(str(image)), "imagenette", models, cam, "predicted class",
                          stage, "jet", 0.5, "stage", api_name="/compare")


def test_compare_returns_images_and_predictions_for_every_model(app, photo_path):
    client, _ = app
    key, table, cam_grid, attention_grid, channels, gallery, predictions, status = compare(client, photo_path)
    assert set(predictions) == set(MODELS)
    assert all(len(p["top5"]) == 5 for p in predictions.values())
    for path in (cam_grid, attention_grid, channels):
        with open(path, "rb") as f:
            assert len(f.read()) > 1000
    assert len(gallery) == 5 * 4 and all(item["image"] for item in gallery)
    assert "5 models on CPU" in status and key


def test_rerender_runs_no_model(app, photo_path):
    client, _ = app
    key = compare(client, photo_path, cam="gradcam++")[0]
    before = client.predict(api_name="/stats")
    for stage in ("layer1", "layer3", "all"):
        out = client.predict(key, stage, "viridis", 0.8, "shared", api_name="/rerender")
        assert len(out[3]) == (5 if stage != "all" else 20)
    after = client.predict(api_name="/stats")
    assert after["model_calls"] == before["model_calls"]
    assert after["hooks_on_models"] == 0
    assert after["cache_entries"] <= after["cache_capacity"]


def test_stage_by_stage_endpoint(app, photo_path):
    client, _ = app
    key = compare(client, photo_path, models=["tiny_ssa"])[0]
    blocks, text = client.predict(key, "tiny_ssa", "jet", 0.5, api_name="/stage_by_stage")
    assert len(blocks) == 8 and "seW = GAP(X)" in text


def test_a_broken_upload_is_a_message_and_the_server_lives_on(app, tmp_path, photo_path):
    client, proc = app
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(Exception, match="damaged"):
        compare(client, broken)
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(Exception, match="not an image"):
        compare(client, text)
    assert proc.poll() is None
    assert set(compare(client, photo_path, models=["tiny_se"])[6]) == {"tiny_se"}


def test_the_app_starts_with_hostile_and_broken_checkpoints(tmp_path, tiny_zoo):
    import json
    import pickle
    import shutil

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    hostile = tmp_path / "ckpts"
    hostile.mkdir()
    shutil.copy(tiny_zoo / "tiny_ssa.safetensors", hostile)
    shutil.copy(tiny_zoo / "tiny_ssa.json", hostile)
    for name in ("evil.pt", "evil.bin", "evil.ckpt", "model.safetensors"):
        (hostile / name).write_bytes(pickle.dumps(Payload()))
    card = json.loads((tiny_zoo / "tiny_se.json").read_text())
    (hostile / "model.json").write_text(json.dumps({**card, "name": "model"}))
    shutil.copy(tiny_zoo / "tiny_se.safetensors", hostile / "mismatch.safetensors")
    (hostile / "mismatch.json").write_text(json.dumps({**card, "name": "mismatch", "attention": "cbam"}))
    shutil.copy(tiny_zoo / "tiny_none.safetensors", hostile / "nocard.safetensors")
    (hostile / "badcard.json").write_text("{")
    shutil.copy(tiny_zoo / "tiny_none.safetensors", hostile / "badcard.safetensors")

    with running_app({"SSAVIZ_BUNDLED": "0", "SSAVIZ_CHECKPOINTS": str(hostile)}) as (url, proc):
        client = Client(url, verbose=False)
        assert client.predict(api_name="/stats")["model_calls"] == 0
        out = client.predict(handle_file(str(ROOT / "assets" / "coffee.jpg")), "imagenette", ["tiny_ssa"], "gradcam",
                             "predicted class", "all", "jet", 0.5, "stage", api_name="/compare")
        assert set(out[6]) == {"tiny_ssa"}
        page = client.predict(api_name="/zoo")  # the zoo view, with what was left out and why
        assert proc.poll() is None
    for text in ("evil.pt: skipped", "never loaded", "model.safetensors: not a readable safetensors file",
                 "mismatch.safetensors does not match its card", "nocard.json: model card is missing",
                 "badcard.json: model card is not valid JSON"):
        assert text in page, text
    assert not marker.exists()
