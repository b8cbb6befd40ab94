import threading

import numpy as np
import pytest
import torch

from ssaviz.capture import capture_attention, model_calls
from ssaviz.cams import compute_cams
from ssaviz.hooks import ForwardRecorder, hook_count
from ssaviz.layers import attention_spec
from ssaviz.resnet import STAGES
from tests.conftest import ATTENTIONS, tiny_model

BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("stem,size,depth", [("imagenet", 64, 18), ("small", 32, 18), ("imagenet", 64, 50)])
def test_capture_shapes_per_stage(attention, stem, size, depth):
    model = tiny_model(attention, depth=depth, stem=stem)
    x = torch.randn(2, 3, size, size + 16)
    cap = capture_attention(model, x)
    spec = attention_spec(attention)
    first = size // 4 if stem == "imagenet" else size
    expansion = 4 if depth == 50 else 1
    for i, stage in enumerate(STAGES):
        blocks = cap.blocks[stage]
        assert len(blocks) == BLOCKS[depth][i]
        h = -(-first // 2**i)
        w = -(-(first + (16 // 4 if stem == "imagenet" else 16)) // 2**i)
        c = round(64 * 0.125 * 2**i) * expansion
        for b in blocks:
            assert b.shape == (c, h, w)
            assert b.activation.shape == (2, h, w)
            assert (b.spatial is not None) == (spec.spatial is not None)
            assert (b.channel is not None) == (spec.channel is not None)
            if b.spatial is not None:
                assert b.spatial.shape == (2, h, w)
            if b.channel is not None:
                assert b.channel.shape == (2, c)
    assert cap.logits.shape == (2, 10)
    idx, p = cap.topk(5)
    assert idx.shape == (2, 5) and np.all(np.diff(p, axis=1) <= 0)


@pytest.mark.parametrize("attention", ["se", "ssa", "salient", "cbam"])
def test_gate_hooks_read_weights_in_unit_interval(attention):
    model = tiny_model(attention)
    cap = capture_attention(model, torch.randn(1, 3, 64, 64) * 3)
    spec = attention_spec(attention)
    for blocks in cap.blocks.values():
        for b in blocks:
            if b.spatial is not None:
                assert b.spatial.min() >= 0 and b.spatial.max() <= 1
            if b.channel is not None and spec.channel_is_gate:
                assert b.channel.min() >= 0 and b.channel.max() <= 1


def test_ssa_squeeze_vector_is_gap_of_branch_output():
    model = tiny_model("ssa")
    seen = {}
    block = model.layer3[1]
    block.bn2.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o.detach()))
    cap = capture_attention(model, torch.randn(1, 3, 64, 64))
    x = seen["x"]
    np.testing.assert_allclose(cap.blocks["layer3"][1].channel[0], x.mean(dim=(2, 3))[0].numpy(), rtol=1e-5, atol=1e-6)
    bn = block.attn.bn
    with torch.no_grad():
        expected = torch.sigmoid(bn((x.mean(dim=(2, 3), keepdim=True) * x).mean(1, keepdim=True)))[0, 0]
    np.testing.assert_allclose(cap.blocks["layer3"][1].spatial[0], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_hooks_are_gone_after_a_call_and_after_an_error():
    model = tiny_model("cbam")
    before = hook_count(model)
    capture_attention(model, torch.randn(1, 3, 64, 64), keep_graph=True)
    assert hook_count(model) == before == 0
    with pytest.raises(RuntimeError):
        capture_attention(model, torch.randn(1, 5, 64, 64))  # wrong channel count fails inside forward
    assert hook_count(model) == 0
    # The recorder also cleans up when the error is raised inside its block.
    with pytest.raises(KeyError):
        with ForwardRecorder({"layer1": model.layer1}):
            assert hook_count(model) == 1
            raise KeyError("boom")
    assert hook_count(model) == 0


def test_two_threads_on_one_model_never_mix_results():
    model = tiny_model("ssa")
    images = [torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    expected = []
    for x in images:
        cap = capture_attention(model, x, keep_graph=True)
        expected.append((cap.blocks["layer2"][1].spatial.copy(), compute_cams(model, x, cap)))
    errors, barrier = [], threading.Barrier(2)

    def worker(k):
        barrier.wait()
        for _ in range(15):
            cap = capture_attention(model, images[k], keep_graph=True)
            cams = compute_cams(model, images[k], cap)
            try:
                np.testing.assert_allclose(cap.blocks["layer2"][1].spatial, expected[k][0], rtol=1e-5, atol=1e-6)
                for s in STAGES:
                    np.testing.assert_allclose(cams[s], expected[k][1][s], rtol=1e-4, atol=1e-6)
            except AssertionError as error:
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert hook_count(model) == 0


def test_capture_runs_the_model_once():
    model = tiny_model("se")
    before = model_calls()
    cap = capture_attention(model, torch.randn(1, 3, 64, 64), keep_graph=True)
    compute_cams(model, torch.randn(1, 3, 64, 64), cap, "gradcam")
    assert model_calls() - before == 1


def test_a_batch_gives_each_image_its_own_result():
    from ssaviz.checkpoints import ModelCard
    from ssaviz.explain import explain_images, explain_model
    from tests.conftest import IMAGENETTE_IDS, IMAGENETTE_NAMES, rand_image

    model = tiny_model("cbam")
    card = ModelCard(name="m", dataset="imagenette", class_ids=IMAGENETTE_IDS, class_names=IMAGENETTE_NAMES,
                     attention="cbam", depth=18, width=0.125, input_size=64)
    images = [rand_image(96, 64, seed=s) for s in range(5)] + [rand_image(64, 64, seed=9)]
    before = model_calls()
    batched = explain_images([("m", model, card)], images, batch_size=4)
    assert model_calls() - before == 3  # 4 + 1 of the 3:2 images, then the square one
    for img, expl in zip(images, batched):
        single = explain_model(model, card, img)
        got = expl.models[0]
        assert got.predictions[0].index == single.predictions[0].index
        for s in STAGES:
            np.testing.assert_allclose(got.cams[s], single.cams[s], rtol=1e-3, atol=1e-5)
            np.testing.assert_allclose(got.blocks[s][-1].spatial, single.blocks[s][-1].spatial, rtol=1e-4, atol=1e-6)
