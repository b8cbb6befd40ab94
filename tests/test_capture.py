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
    every = capture_attention(model, x, block_activations=True)
    spec = attention_spec(attention)
    first = size // 4 if stem == "imagenet" else size
    expansion = 4 if depth == 50 else 1
    for i, stage in enumerate(STAGES):
        blocks = cap.blocks[stage]
        assert len(blocks) == BLOCKS[depth][i]
        h = -(-first // 2**i)
        w = -(-(first + (16 // 4 if stem == "imagenet" else 16)) // 2**i)
        c = round(64 * 0.125 * 2**i) * expansion
        for k, (b, full) in enumerate(zip(blocks, every.blocks[stage])):
            assert b.shape == full.shape == (c, h, w)
            assert full.activation.shape == (2, h, w)
            if k == len(blocks) - 1:  # a comparison gets the stage's activation map, not every block's
                np.testing.assert_array_equal(b.activation, full.activation)
            else:
                assert b.activation is None
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


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_the_one_transfer_path_gives_the_same_maps(attention):
    """Off the CPU, capture moves every map in one copy (one GPU sync); it must read the same
    values as the CPU path, which hands over views of the tensors."""
    from ssaviz.capture import _arrays, _plan

    model = tiny_model(attention, depth=50)
    x = torch.randn(2, 3, 64, 80)
    cap = capture_attention(model, x, block_activations=True)
    plan = _plan(model, attention)
    # Record as the GPU path does (tensors in the hooks), and convert with _arrays.
    recorder = ForwardRecorder(records=plan.records(keep_graph=False, on_cpu=False, block_activations=True))
    with recorder, torch.inference_mode():
        model(x)
    values = iter(_arrays(recorder.outputs, plan.record_order(True)))
    for blocks in cap.blocks.values():
        for b in blocks:
            activation, c = next(values)
            assert c == b.shape[0]
            np.testing.assert_allclose(activation, b.activation, rtol=1e-5, atol=1e-6)
            if b.spatial is not None:
                np.testing.assert_array_equal(next(values).reshape(b.spatial.shape), b.spatial)
            if b.channel is not None:
                np.testing.assert_array_equal(next(values).reshape(b.channel.shape), b.channel)
    assert next(values, None) is None


def test_activation_maps_are_channel_means():
    model = tiny_model("salient")
    seen = {}
    model.layer2[0].register_forward_hook(lambda m, i, o: seen.__setitem__("out", o.detach()))
    cap = capture_attention(model, torch.randn(1, 3, 64, 64), block_activations=True)
    np.testing.assert_allclose(cap.blocks["layer2"][0].activation, seen["out"].mean(dim=1).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_models_of_a_family_share_one_input_and_batches_keep_model_order(monkeypatch):
    import ssaviz.explain as explain
    from ssaviz.checkpoints import ModelCard
    from tests.conftest import IMAGENETTE_IDS, IMAGENETTE_NAMES, rand_image

    def card(name, attention, size):
        return ModelCard(name=name, dataset="imagenette", class_ids=IMAGENETTE_IDS, class_names=IMAGENETTE_NAMES,
                         attention=attention, depth=18, width=0.125, input_size=size)

    models = [("a", tiny_model("ssa", seed=1), card("a", "ssa", 64)),
              ("b", tiny_model("se", seed=2), card("b", "se", 48)),  # another input size
              ("c", tiny_model("none", seed=3), card("c", "none", 64))]
    made = []
    real = explain.to_tensor
    monkeypatch.setattr(explain, "to_tensor", lambda *a, **k: made.append(a[1]) or real(*a, **k))
    photo = rand_image(96, 64, seed=4)
    expl = explain.explain_image(models, photo)
    assert sorted(made) == [48, 64]  # a and c share theirs
    assert [r.name for r in expl.models] == ["a", "b", "c"]
    # Separately made inputs give the same results as the shared one.
    alone = explain.explain_model(models[2][1], models[2][2], photo, "c")
    np.testing.assert_array_equal(expl.models[2].cams["layer4"], alone.cams["layer4"])

    made.clear()
    images = [rand_image(96, 64, seed=s) for s in range(3)]
    batched = explain.explain_images(models, images, batch_size=2)
    assert sorted(made) == [48, 48, 48, 64, 64, 64]  # one per image and input size, not per model
    assert all([r.name for r in e.models] == ["a", "b", "c"] for e in batched)


def test_a_module_under_two_names_gets_one_hook_and_both_records():
    model = tiny_model("none")
    block = model.layer2[1]
    recorder = ForwardRecorder({"out": block, "graph": block}, keep_graph={"graph"},
                               reduce={"out": lambda t: t.mean(dim=1)})
    with recorder:
        assert hook_count(model) == 1
        model(torch.randn(1, 3, 64, 64))
    assert recorder.outputs["graph"].requires_grad and recorder.outputs["graph"].dim() == 4
    assert not recorder.outputs["out"].requires_grad and recorder.outputs["out"].dim() == 3
    torch.testing.assert_close(recorder.outputs["out"], recorder.outputs["graph"].detach().mean(dim=1))
    assert hook_count(model) == 0
