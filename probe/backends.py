"""One registry, under one lock, of probe's attention backends and of what they serve.

transformers looks a model's attention function up by name in process-wide tables
(``AttentionInterface`` and, for its mask, ``AttentionMaskInterface``). Both probes register a
backend there: :class:`probe.capture.AttentionProbe` ``probe_capture``,
:class:`probe.encdec.EncoderDecoderProbe` ``probe_encdec``. :data:`REGISTRY` keeps, for both:

- each backend's users: registered (with the eager mask function, without which a new backend
  silently gets no mask) by the first probe that attaches, removed by the last that detaches;
- the models with a probe attached: one probe at a time per model, of either kind;
- which probe records which attention module's calls (the backend's lookup on every call).

Claiming a model and counting a backend's users happen together under the lock, so two threads
attaching at once cannot both claim one model or both register (or remove) a backend.

Imports :mod:`probe.errors` (and, inside functions, transformers).

>>> from probe.backends import Backends
>>> import torch
>>> reg, model = Backends(), torch.nn.Linear(1, 1)
>>> reg.define("probe_doctest", lambda *a, **k: None)
>>> reg.acquire("probe_doctest", model, "a probe")
>>> reg.users("probe_doctest"), reg.attached(model)
(1, True)
>>> reg.release("probe_doctest", model)
>>> reg.users("probe_doctest"), reg.attached(model)
(0, False)
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import ProbeError, UnsupportedModelError


class Backends:
    """Named attention backends, their users, attached models and bound modules."""

    def __init__(self):
        self._lock = threading.Lock()
        self._functions: dict[str, Callable] = {}
        self._users: dict[str, int] = {}
        self._models: set[int] = set()
        self._modules: dict[int, tuple] = {}

    def define(self, name: str, function: Callable) -> None:
        """Name a backend's attention function (registered with transformers while in use)."""
        with self._lock:
            self._functions[name] = function

    def acquire(self, name: str, model, what: str) -> None:
        """Claim ``model`` for one probe (``what`` names it in the error) and count a user of
        backend ``name``, registering it with transformers for the first user."""
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask

        with self._lock:
            if id(model) in self._models:
                raise ProbeError(f"another probe is already attached to this model; leave its "
                                 f"with-block before attaching {what}")
            if not self._users.get(name):
                AttentionInterface.register(name, self._functions[name])
                AttentionMaskInterface.register(name, eager_mask)
            self._users[name] = self._users.get(name, 0) + 1
            self._models.add(id(model))

    def release(self, name: str, model) -> None:
        """Undo :meth:`acquire`: free ``model``; the last user unregisters the backend."""
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        with self._lock:
            self._models.discard(id(model))
            self._users[name] = max(self._users.get(name, 0) - 1, 0)
            if not self._users[name]:
                AttentionInterface._global_mapping.pop(name, None)
                AttentionMaskInterface._global_mapping.pop(name, None)

    def users(self, name: str) -> int:
        return self._users.get(name, 0)

    def attached(self, model) -> bool:
        return id(model) in self._models

    # which probe records which module: read by the backends on every attention call
    def bind(self, module, entry: tuple) -> None:
        """``entry[0]`` is the probe; the rest is what its backend needs to record the call."""
        with self._lock:
            self._modules[id(module)] = entry

    def unbind(self, module, owner=None) -> tuple | None:
        """Forget ``module`` (only if ``owner`` is bound to it, when given); its old entry."""
        with self._lock:
            entry = self._modules.get(id(module))
            if entry is None or (owner is not None and entry[0] is not owner):
                return None
            return self._modules.pop(id(module))

    def entry(self, module) -> tuple | None:
        """The entry bound to ``module``, or None (a lock-free read: one dict lookup)."""
        return self._modules.get(id(module))


#: the process's one registry
REGISTRY = Backends()


def switch_to(model, backend: str, modules) -> None:
    """Set ``model``'s attention implementation to ``backend`` and check that it took, for the
    model and for every ``(name, module)`` of ``modules`` (a module with its own config keeps
    its own setting). Raises :class:`UnsupportedModelError` when it did not: the model's
    attention does not go through transformers' AttentionInterface."""
    model.set_attn_implementation(backend)
    stuck = [name for name, module in modules
             if getattr(getattr(module, "config", model.config), "_attn_implementation", None) != backend]
    if model.config._attn_implementation != backend or stuck:
        raise UnsupportedModelError(
            f"{type(model).__name__} did not accept a new attention implementation "
            f"(its attention does not go through transformers' AttentionInterface"
            f"{'; modules ' + ', '.join(stuck[:3]) if stuck else ''}); probe cannot "
            "capture it exactly")


def restore(model, original: str | None) -> None:
    """Give ``model`` back its own attention implementation ``original`` (None: never switched)."""
    if original is not None and model.config._attn_implementation != original:
        model.set_attn_implementation(original)
