"""The benchmark runs end to end and reports every measure under its name (no timing asserted here)."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

KEYS = {"forward_ms", "fwdbwd_ms", "capture_ms", "compare_ms", "baseline_ms", "rerender_ms",
        "rerender_model_calls", "cold_start_s", "capture_over_forward", "compare_over_fwdbwd",
        "compare_over_baseline", "images_per_s", "device", "torch", "threads"}


def test_bench_writes_every_measure(tiny_zoo, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "SSAVIZ_BUNDLED": "0", "SSAVIZ_CHECKPOINTS": str(tiny_zoo), "SSAVIZ_DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "ssaviz", "bench", "--json", str(out), "--repeats", "1",
                           "--warmup", "1", "--batch", "8"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert KEYS <= result.keys()
    assert set(result["forward_ms"]) == {"tiny_cbam", "tiny_none", "tiny_salient", "tiny_se", "tiny_ssa"}
    assert result["rerender_model_calls"] == 0
    assert len(set(result["fwdbwd_ms"].values())) > 1  # each model timed, not one of them five times
    assert result["cold_start_s"] > 0 and result["images_per_s"] > 0
    assert result["compare_over_baseline"] == result["compare_ms"] / result["baseline_ms"]
    assert "| compare_over_fwdbwd |" in proc.stdout
