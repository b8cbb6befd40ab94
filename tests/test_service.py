"""Everything the UI does, through the package API, without a server."""

import pytest

from ssaviz.capture import model_calls
from ssaviz.errors import SsavizError
from ssaviz.resnet import STAGES
from ssaviz.service import Service
from ssaviz.zoo import discover
from tests.conftest import rand_image


@pytest.fixture(scope="module")
def service(tiny_zoo):
    return Service(discover([tiny_zoo], include_online=True), device="cpu", cache_size=3)


def test_compare_renders_every_model(service, photo_path):
    key, result = service.compare(photo_path)
    assert service.default_family() == "imagenette"
    names = [r.name for r in result.explanation.models]
    assert names == service.model_names("imagenette") and len(names) == 5
    view = service.render(key)
    assert set(view.predictions) == set(names)
    assert all(len(p["top5"]) == 5 for p in view.predictions.values())
    assert len(view.gallery) == 5 * len(STAGES)
    assert view.cam_grid.width > 5 * 224 and view.attention_grid.size == view.cam_grid.size
    assert view.channels is not None  # se, ssa and cbam have channel weights
    assert "| # |" in view.table and "tiny_ssa" in view.table


def test_rerender_runs_no_model(service, photo_path):
    key, _ = service.compare(photo_path)
    before = model_calls()
    for stage in ("layer1", "layer4", "all"):
        for scale in ("map", "stage", "shared"):
            view = service.render(key, stage, "viridis", 0.7, scale)
    assert len(view.gallery) == 20
    single = service.render(key, "layer2")
    assert len(single.gallery) == 5
    # Asking again for the same comparison is served from the cache too.
    service.compare(photo_path)
    assert model_calls() == before


def test_cache_is_bounded_and_least_recently_used_goes(service):
    keys = [service.compare(rand_image(seed=s), models=["tiny_ssa"])[0] for s in range(5)]
    assert len(service.cache) == 3
    with pytest.raises(SsavizError, match="press Compare"):
        service.render(keys[0])
    service.render(keys[-1])


def test_target_class_and_cam_choice(service, photo_path):
    key, result = service.compare(photo_path, models=["tiny_se", "tiny_none"], cam="layercam",
                                  target="church (n03028079)")
    assert [r.target.name for r in result.explanation.models] == ["church", "church"]
    assert result.explanation.cam_method == "layercam"
    with pytest.raises(SsavizError, match="unknown target class"):
        service.compare(photo_path, target="unicorn")


def test_stage_by_stage_shows_every_block_with_numbers(service, photo_path):
    key, _ = service.compare(photo_path)
    gallery, text = service.stage_by_stage(key, "tiny_ssa")
    assert len(gallery) == 8  # ResNet-18: 2 blocks per stage
    assert gallery[0][1].startswith("layer1.0 · 8×16×24")
    assert "saW = σ(BN(mean_c(seW·X)))" in text and "layer4.1" in text
    _, se_text = service.stage_by_stage(key, "tiny_se")
    assert "below 0.5" in se_text
    # A network without spatial attention shows each block's activation map; the comparison made
    # only the stages', so the view runs the network once more, once.
    before = model_calls()
    plain_gallery, plain = service.stage_by_stage(key, "tiny_none")
    assert "no attention module" in plain and len(plain_gallery) == 8
    assert "activation [" in plain
    assert model_calls() == before + 1
    service.stage_by_stage(key, "tiny_none")
    service.stage_by_stage(key, "tiny_ssa")  # its spatial maps came with the comparison
    assert model_calls() == before + 1


def test_zoo_view_lists_models_and_online_status(service):
    text = service.zoo_markdown()
    for name in ("tiny_none", "tiny_se", "tiny_ssa", "tiny_salient", "tiny_cbam", "resnet50", "se_resnet50"):
        assert f"| {name} |" in text
    assert "needs a network connection" in text or "ready" in text


@pytest.mark.parametrize("upload,message", [
    (b"", "empty"), ("truncated", "damaged or truncated"), (b"%PDF-1.4", "not an image"),
])
def test_bad_uploads_give_a_clear_message(service, tmp_path, photo_path, upload, message):
    path = tmp_path / "upload.jpg"
    if upload == "truncated":
        upload = photo_path.read_bytes()[:5000]
    path.write_bytes(upload)
    with pytest.raises(SsavizError, match=message):
        service.compare(str(path))


def test_family_mismatch_and_unknown_model(service, photo_path):
    with pytest.raises(SsavizError, match="not in family"):
        service.compare(photo_path, models=["resnet50"])
    with pytest.raises(SsavizError, match="no model family"):
        service.compare(photo_path, family="cifar10")


def test_online_family_offline_is_a_clear_message(service, photo_path, monkeypatch, tmp_path):
    import socket

    import torch

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty download cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    from ssaviz import online

    monkeypatch.setattr(online, "cached_path", lambda name, cache_dir=None: None)
    with pytest.raises(SsavizError, match="needs a network connection"):
        service.compare(photo_path, family="imagenet-1k", models=["resnet50"])
    # The local family still works afterwards.
    assert service.compare(photo_path, models=["tiny_ssa"])[1].explanation.models[0].name == "tiny_ssa"


def test_cached_results_keep_the_display_copy_not_the_full_photo(service):
    key, result = service.compare(rand_image(3000, 2000, seed=7), models=["tiny_ssa"])
    assert max(result.explanation.image.size) <= 640 and result.display.size == result.explanation.image.size
    assert result.original_size == (3000, 2000)
    assert "image 3000x2000" in service.status_line(result)
    assert service.render(key).gallery[0][0].size == result.display.size
