"""One owner for forward hooks: registered on entry, removed on exit (also on error).

Hooks record only the forward passes of the thread that opened the context,
so requests sharing one loaded model in several threads never see each
other's tensors.
"""

import threading

import torch
from torch import nn


class ForwardRecorder:
    """Record the outputs of named submodules during forwards inside ``with``.

    ``keep_graph`` names whose outputs are kept attached to autograd (for
    gradients later); all others are detached at once. ``reduce`` maps a name
    to a function applied to the output in the hook, so only the (small)
    result is kept alive. A module listed under several names gets one hook.
    """

    def __init__(self, modules: dict[str, nn.Module] | None = None, keep_graph: set[str] = frozenset(),
                 reduce: dict | None = None, *, records: dict | None = None):
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._thread = None
        # ``records`` (from ``plan_records``) lets a caller that records the same modules again and
        # again build this table once.
        self._records = records if records is not None else plan_records(modules or {}, keep_graph, reduce)

    def _record(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        # One bound method serves every module: no closure is built per hook and call.
        if threading.get_ident() != self._thread:
            return
        detached = None
        for name, reducer, keep in self._records[module]:
            if keep or not output.requires_grad:  # nothing to detach from
                value = output
            else:
                if detached is None:
                    detached = output.detach()
                value = detached
            self.outputs[name] = reducer(value) if reducer else value

    def __enter__(self) -> "ForwardRecorder":
        self._thread = threading.get_ident()
        try:
            for module in self._records:
                self._handles.append(module.register_forward_hook(self._record))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def plan_records(modules: dict[str, nn.Module], keep_graph: set[str] = frozenset(),
                 reduce: dict | None = None) -> dict[nn.Module, list[tuple]]:
    """module -> what to record from its output: [(name, reducer or None, keep attached)]."""
    reduce = reduce or {}
    records: dict[nn.Module, list[tuple]] = {}
    for name, module in modules.items():
        records.setdefault(module, []).append((name, reduce.get(name), name in keep_graph))
    return records


def hook_count(model: nn.Module) -> int:
    """Forward, pre-forward and backward hooks currently on ``model``'s modules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())
