"""Many users at once against the real server: no mixed results, no leak, bounded cache, no hooks left."""

import threading

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.conftest import ROOT
from tests.server import running_app

CLIENTS, REQUESTS, IMAGES = 8, 20, 12
MODELS = ["tiny_cbam", "tiny_none", "tiny_salient", "tiny_se", "tiny_ssa"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("load")
    paths = []
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        if i < 6:
            img = Image.open(sorted((ROOT / "assets").glob("*.jpg"))[i]).convert("RGB")
        else:
            img = Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8))
        paths.append(directory / f"img{i}.png")
        img.save(paths[-1])
    return paths


def request(client, path):
    out = client.predict(handle_file(str(path)), "imagenette", MODELS, "gradcam", "predicted class",
                         "layer4", "jet", 0.5, "stage", api_name="/compare")
    return out[6]  # predictions with per-stage map statistics


def assert_same(got: dict, want: dict):
    assert set(got) == set(want)
    for name in want:
        assert got[name]["top5"][0]["class_id"] == want[name]["top5"][0]["class_id"]
        np.testing.assert_allclose([p["prob"] for p in got[name]["top5"]],
                                   [p["prob"] for p in want[name]["top5"]], rtol=1e-3, atol=1e-5)
        for stage, kinds in want[name]["maps"].items():
            for kind, stats in kinds.items():
                for key, value in stats.items():
                    np.testing.assert_allclose(got[name]["maps"][stage][kind][key], value, rtol=1e-4, atol=1e-6)


def run_load(url, images, expected):
    errors = []
    barrier = threading.Barrier(CLIENTS)

    def user(k):
        client = Client(url, verbose=False)
        barrier.wait()
        for j in range(REQUESTS):
            i = (k * 5 + j) % IMAGES
            try:
                assert_same(request(client, images[i]), expected[i])
            except Exception as error:  # collected, reported below
                errors.append(f"client {k} request {j} image {i}: {error!r}"[:500])

    threads = [threading.Thread(target=user, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]


def test_many_clients_get_their_own_results_and_memory_stays_flat(tiny_zoo, images):
    env = {"SSAVIZ_BUNDLED": "0", "SSAVIZ_CHECKPOINTS": str(tiny_zoo), "SSAVIZ_CACHE_SIZE": "6"}
    with running_app(env) as (url, proc):
        client = Client(url, verbose=False)
        expected = [request(client, path) for path in images]  # one at a time: the reference
        run_load(url, images, expected)  # warm-up: the same load
        warm = client.predict(api_name="/stats")
        run_load(url, images, expected)
        after = client.predict(api_name="/stats")
        assert proc.poll() is None
    print(f"resident memory after warm-up {warm['rss_mb']} MB, after the load {after['rss_mb']} MB")
    assert after["rss_mb"] - warm["rss_mb"] < 150, (warm, after)
    assert after["cache_entries"] <= after["cache_capacity"] == 6
    assert after["hooks_on_models"] == 0
    assert after["model_calls"] > warm["model_calls"]  # the cache was too small to serve every request
