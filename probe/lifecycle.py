"""The attach/detach lifecycle both probes share: claim the model, bind its attention modules,
switch it to the probe's attention backend, register the forward hooks, and on leaving undo
all of it, even through an exception, so the model is exactly as it was.

:class:`ProbeLifecycle` is the base of :class:`probe.capture.AttentionProbe` and
:class:`probe.encdec.EncoderDecoderProbe`. A subclass names its backend (``BACKEND``), sets
``self._recorder`` (an object with ``captures``, ``layer_facts``, ``reset()`` and the
``before_forward`` / ``after_forward`` model hooks, such as :class:`probe.recording.Recorder`)
and says which modules its backend serves (:meth:`ProbeLifecycle._bindings`). It also gives
both probes the public switch that pauses recording, :meth:`ProbeLifecycle.paused`.

This module's one job is that lifecycle (and the one eval-mode forward both probes make). It
imports torch, :mod:`probe.backends` (the registry, ``switch_to`` and ``restore``),
:mod:`probe.errors` and :mod:`probe.inputs`; only the probes import it.

>>> from probe import AttentionProbe, load_model
>>> model, tokenizer = load_model()
>>> batch = tokenizer(["A robin is a bird."], return_tensors="pt")
>>> with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
...     with p.paused():
...         _ = model(**batch)  # runs through the probe's backend, records nothing
...     _ = model(**batch)
...     len(p.captures), p.last[0]["blocks.0.attn.pattern"].shape
(1, (12, 8, 8))
>>> model.config._attn_implementation  # restored on leaving
'sdpa'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType

import torch

from .backends import REGISTRY, restore, switch_to
from .errors import ProbeError
from .inputs import no_cache


class ProbeLifecycle:
    """Hooks and attention backend that exist only inside a ``with`` block.

    Subclasses set ``BACKEND``, ``self._recorder`` (after calling this ``__init__``) and
    :meth:`_bindings`; they may add hooks through :meth:`_hooks`.
    """

    #: the name of the subclass's attention backend in :data:`probe.backends.REGISTRY`
    BACKEND: str = ""

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self._recorder = None  # set by the subclass
        self._handles = []
        self._attached = False
        self._original_impl = None
        self._forward_options = no_cache(model)
        self._pauses = 0

    def _bindings(self) -> Iterator[tuple]:
        """``(name, module, entry)`` per attention module the backend serves: ``(self, *entry)``
        is bound to the module in the registry, for the backend to find on every call."""
        raise NotImplementedError

    def _hooks(self) -> list[tuple]:
        """``(module, hook, pre)`` registered with kwargs on attaching (``pre``: a forward
        pre-hook); by default the recorder's ``before_forward`` and ``after_forward`` on the
        model."""
        return [(self.model, self._recorder.before_forward, True),
                (self.model, self._recorder.after_forward, False)]

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def attach(self):
        """Register the backend and hooks (prefer ``with Probe(...)``); returns the probe."""
        if self._attached:
            raise ProbeError("this probe is already attached")
        REGISTRY.acquire(self.BACKEND, self.model, f"this {type(self).__name__}")
        self._attached = True
        try:
            self._original_impl = self.model.config._attn_implementation
            bound = list(self._bindings())
            for _, module, entry in bound:
                REGISTRY.bind(module, (self, *entry))
            switch_to(self.model, self.BACKEND, [(name, module) for name, module, _ in bound])
            for module, hook, pre in self._hooks():
                register = module.register_forward_pre_hook if pre else module.register_forward_hook
                self._handles.append(register(hook, with_kwargs=True))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Remove everything the probe added and restore the attention implementation."""
        if not self._attached:
            return
        try:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            for _, module, _ in self._bindings():
                REGISTRY.unbind(module, owner=self)
            restore(self.model, self._original_impl)
        finally:
            self._recorder.reset()
            self._attached = False
            REGISTRY.release(self.BACKEND, self.model)

    def _require_attached(self, what: str) -> None:
        if not self._attached:
            raise ProbeError(f"{what} needs an attached probe: use "
                             f"`with {type(self).__name__}(...) as p:`")

    @property
    def original_attn_implementation(self) -> str | None:
        """The model's own attention implementation, restored on leaving (None before)."""
        return self._original_impl

    @property
    def forward_options(self) -> Mapping[str, object]:
        """What the probe adds to the model calls it makes (``use_cache=False`` where the
        model's forward takes it), read-only."""
        return MappingProxyType(self._forward_options)

    @property
    def captures(self) -> list:
        """One Capture per forward call of the model inside the with-block, oldest first."""
        return self._recorder.captures

    @property
    def layer_facts(self) -> dict:
        """Per layer, what the model passed to its attention function (scaling, soft-cap, ...)."""
        return self._recorder.layer_facts

    @property
    def last(self):
        """The capture of the latest forward call."""
        if not self.captures:
            raise ProbeError("nothing captured yet: call the model inside the with-block first")
        return self.captures[-1]

    def clear(self) -> None:
        """Forget what was captured so far (frees the memory)."""
        self.captures.clear()

    @property
    def recording(self) -> bool:
        """False inside :meth:`paused`."""
        return self._pauses == 0

    @contextlib.contextmanager
    def paused(self):
        """Inside the block, forward calls record nothing: the probe's backend still computes
        the attention (and runs interventions, :mod:`probe.patching`), but no tensors, layer
        facts or captures are kept. Blocks nest; leaving the outermost resumes recording."""
        self._pauses += 1
        try:
            yield self
        finally:
            self._pauses -= 1


def run_forward(probe: ProbeLifecycle, **inputs) -> None:
    """One eval-mode forward of ``probe.model`` on ``inputs`` under ``torch.inference_mode``,
    with the probe's :attr:`~ProbeLifecycle.forward_options` (no key/value cache): the forward
    that both probes' id calls make."""
    model = probe.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(**inputs, **probe.forward_options)
    finally:
        model.train(was_training)


def capture_forward(probe: ProbeLifecycle, **inputs):
    """:func:`run_forward`'s Capture, taken out of ``probe.captures``."""
    before = len(probe.captures)
    run_forward(probe, **inputs)
    if len(probe.captures) == before:
        raise ProbeError("the forward call captured nothing" + (
            ": recording is paused (leave the paused() block first)" if not probe.recording
            else ": no attention layer of the probe ran"))
    return probe.captures.pop()
