"""The online ImageNet entries, tested offline on locally made weights in the official formats."""

import socket

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from ssaviz import online
from ssaviz.errors import NetworkRequired
from ssaviz.zoo import discover
from tests.conftest import randomise_norms


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", ["resnet50", "se_resnet50"])
def test_offline_entries_say_they_need_a_network(name, tmp_path, offline):
    with pytest.raises(NetworkRequired, match=f"{name} needs a network connection"):
        online.load_online(name, cache_dir=tmp_path)
    assert online.status(name, tmp_path).startswith("downloads on first use")


def test_zoo_lists_online_entries_without_touching_the_network(offline, monkeypatch):
    monkeypatch.setenv("SSAVIZ_BUNDLED", "0")
    monkeypatch.delenv("SSAVIZ_CHECKPOINTS", raising=False)
    zoo = discover()
    assert {n: e.online for n, e in zoo.entries.items()} == {"resnet50": True, "se_resnet50": True}
    assert len(zoo.get("resnet50").card.class_ids) == 1000
    assert zoo.default_family() is None


def test_torchvision_resnet50_weights_give_the_reference_logits(tmp_path, offline):
    ref = randomise_norms(torchvision.models.resnet50())
    # torchvision's official file: a pickled state dict named after its URL.
    torch.save(ref.state_dict(), tmp_path / "resnet50-11ad3fa6.pth")
    model, card = online.load_online("resnet50", cache_dir=tmp_path)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert card.class_names[0] == "tench" and card.class_ids[0] == "n01440764"
    assert online.status("resnet50", tmp_path) == "ready"


def test_timm_seresnet50_weights_give_the_reference_logits(tmp_path, offline):
    ref = randomise_norms(timm.create_model("seresnet50"))
    # The Hugging Face cache layout that hf_hub_download leaves behind.
    repo = tmp_path / "models--timm--seresnet50.a1_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(snapshot / "model.safetensors"))
    model, card = online.load_online("se_resnet50", cache_dir=tmp_path)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert card.attention == "se"
