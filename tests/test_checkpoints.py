import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from ssaviz.checkpoints import load_checkpoint, read_card
from ssaviz.errors import CheckpointError
from ssaviz.zoo import discover
from tests.conftest import make_checkpoint


class WritesMarker:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def drop_pickle(path, marker):
    path.write_bytes(pickle.dumps({"state_dict": WritesMarker(marker)}))


def test_round_trip_gives_the_same_logits(tmp_path):
    path, card, model = make_checkpoint(tmp_path, "cbam", half=False)
    loaded = load_checkpoint(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert read_card(path.with_suffix(".json")) == card


def test_fp16_round_trip_stays_close(tmp_path):
    path, _, model = make_checkpoint(tmp_path, "ssa", half=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(path)(x), model(x), rtol=2e-2, atol=2e-2)


def test_weights_that_do_not_match_the_card_are_refused(tmp_path):
    path, card, _ = make_checkpoint(tmp_path, "ssa")
    card_path = path.with_suffix(".json")
    data = json.loads(card_path.read_text())
    data["attention"] = "se"
    card_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"tiny_ssa.safetensors does not match its card.*missing: layer1\.0\.attn\.fc1"):
        load_checkpoint(path)
    data["attention"], data["width"] = "ssa", 0.25
    card_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"wrong shape: conv1.weight \[8, 3, 7, 7\] \(card says \[16, 3, 7, 7\]\)"):
        load_checkpoint(path)


def test_broken_cards_and_files_name_the_file_and_problem(tmp_path):
    good, _, _ = make_checkpoint(tmp_path, "none", name="good")
    nocard, _, _ = make_checkpoint(tmp_path, "se", name="nocard")
    nocard.with_suffix(".json").unlink()
    bad_json, _, _ = make_checkpoint(tmp_path, "ssa", name="badjson")
    bad_json.with_suffix(".json").write_text("{not json")
    lacking, _, _ = make_checkpoint(tmp_path, "salient", name="lacking")
    lacking.with_suffix(".json").write_text(json.dumps({"name": "lacking", "dataset": "imagenette"}))
    shapes = tmp_path / "shapes.safetensors"
    save_file({"conv1.weight": torch.zeros(3, 3)}, str(shapes))
    shapes.with_suffix(".json").write_text(good.with_suffix(".json").read_text().replace('"good"', '"shapes"'))
    zoo = discover([tmp_path], include_online=False)
    assert list(zoo.entries) == ["good"]
    text = "\n".join(zoo.problems)
    assert "nocard.json: model card is missing" in text
    assert "badjson.json: model card is not valid JSON" in text
    assert "lacking.json: the card lacks class_ids, class_names" in text
    assert "shapes.safetensors does not match its card" in text and "missing: " in text


def test_pickles_are_never_loaded_under_any_extension(tmp_path):
    marker = tmp_path / "pwned"
    make_checkpoint(tmp_path, "ssa", name="real")
    for suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl"):
        drop_pickle(tmp_path / f"evil{suffix}", marker)
    # A pickle disguised as safetensors, with a valid card beside it.
    drop_pickle(tmp_path / "disguised.safetensors", marker)
    (tmp_path / "disguised.json").write_text((tmp_path / "real.json").read_text().replace('"real"', '"disguised"'))
    zoo = discover([tmp_path], include_online=False)
    assert list(zoo.entries) == ["real"]
    assert sum("never loaded" in p for p in zoo.problems) == 5
    assert any("disguised.safetensors: not a readable safetensors file" in p for p in zoo.problems)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "disguised.safetensors")
    assert not marker.exists()


def test_families_group_models_with_the_same_classes(tmp_path):
    make_checkpoint(tmp_path, "none", name="a")
    make_checkpoint(tmp_path, "ssa", name="b")
    make_checkpoint(tmp_path, "se", name="c", dataset="cifar10", stem="small", input_size=32)
    zoo = discover([tmp_path])
    fams = zoo.families()
    assert [e.name for e in fams["imagenette"]] == ["a", "b"]
    assert [e.name for e in fams["cifar10"]] == ["c"]
    assert {e.name for e in fams["imagenet-1k"]} == {"resnet50", "se_resnet50"}
    assert zoo.default_family() == "imagenette"
