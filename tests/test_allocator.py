"""The allocator tuning applies once, can be switched off, and leaves glibc's own settings alone."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = "from ssaviz.allocator import keep_freed_memory as k; print(k(), k())"


def run(env_extra: dict) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SSAVIZ_MALLOC"))}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**env, **env_extra},
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_thresholds_are_raised_once_on_glibc():
    import platform

    expected = "True True" if platform.libc_ver()[0] == "glibc" else "False False"
    assert run({}) == expected


def test_switched_off_by_env_and_by_the_users_own_malloc_settings():
    assert run({"SSAVIZ_MALLOC_TUNING": "0"}) == "False False"
    assert run({"MALLOC_MMAP_THRESHOLD_": "131072"}) == "False False"
