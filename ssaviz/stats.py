"""Numbers about a running server, for load tests and the curious: model runs, cache, hooks, memory."""

import os

from .capture import model_calls
from .hooks import hook_count


def resident_memory_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def server_stats(service) -> dict:
    return {
        "model_calls": model_calls(),
        "cache_entries": len(service.cache),
        "cache_capacity": service.cache.capacity,
        "loaded_models": len(service.store.loaded()),
        "hooks_on_models": sum(hook_count(m) for m in service.store.loaded()),
        "rss_mb": round(resident_memory_mb(), 1),
        "device": str(service.device),
    }
