"""Captured activations, per example, with padding removed.

A :class:`Capture` is a sequence of :class:`Example`; an example maps canonical keys
(:mod:`probe.names`) to numpy arrays. Live captures and stored runs (:mod:`probe.store`)
share this interface, so analyses do not care where the numbers come from.

Imports numpy, :mod:`probe.attention`, :mod:`probe.errors`, :mod:`probe.names` and
:mod:`probe.packing` (and, inside functions, torch and :mod:`probe.notebook`).

>>> import numpy as np
>>> batch = CapturedBatch({"blocks.0.attn.pattern": np.ones((1, 2, 4, 4)) / 4},
...                       spans=[(0, 3)], tokens=[["[CLS]", "hi", "[SEP]"]])
>>> ex = batch.example(0)
>>> ex.tokens, ex["blocks.0.attn.pattern"].shape
(['[CLS]', 'hi', '[SEP]'], (2, 3, 3))
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from . import names
from .attention import value_weighted
from .errors import InputError, MissingKeyError, OutOfRangeError
from .packing import pack_rows, packed_size, unpad_index


def example_number(i, n: int) -> int:
    """``i`` as an example number of a sequence of ``n``, negative counting from the end.

    >>> example_number(-1, 3)
    -1
    >>> example_number(3, 3)
    Traceback (most recent call last):
    probe.errors.OutOfRangeError: example 3 out of range: there are 3 examples
    """
    try:
        i = operator.index(i)
    except TypeError:
        raise InputError(f"examples are numbered 0..{n - 1} (or sliced), not indexed by "
                         f"{type(i).__name__} {i!r}; read a key of one: capture[0][key]") from None
    if not -n <= i < n:
        raise OutOfRangeError(f"example {i} out of range: there are {n} examples")
    return i


class Example(Mapping):
    """One example's captured tensors (a read-only mapping key -> numpy array).

    ``tokens`` are the example's tokens without padding, ``text`` its input text (None when
    captured around a user's own forward call), ``meta`` any metadata given with the input.
    """

    def __init__(self, tokens, keys: Sequence[str], getter, *, text=None, input_ids=None,
                 meta=None, index=None, head_map=None):
        self.tokens: list[str] | None = tokens
        #: per layer, ``(query heads, kv heads)`` that the head and kv_head axes hold
        #: (see :attr:`heads`); empty when unknown
        self.head_map: dict = dict(head_map or {})
        self.text: str | None = text
        self.input_ids: np.ndarray | None = input_ids
        self.meta: dict = dict(meta or {})
        self.index = index
        self._keys = tuple(keys)
        self._key_set = frozenset(keys)
        self._get = getter

    def __getitem__(self, key: str) -> np.ndarray:
        layer, component = names.parse_key(key)  # raises for malformed keys
        if key not in self._key_set:
            raise MissingKeyError(f"{key!r} was not captured; captured keys are e.g. "
                           f"{', '.join(self._keys[:4])} ...")
        if component in names.DERIVED:
            try:
                return self._get(key)  # a source that holds it directly
            except KeyError:
                return value_weighted(self._get(names.key(layer, "pattern")),
                                      self._get(names.key(layer, "value_norm")))
        return self._get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._key_set

    def narrowed(self, keys) -> Example:
        """The same example exposing only ``keys``."""
        return Example(self.tokens, keys, self._get, text=self.text, input_ids=self.input_ids,
                       meta=self.meta, index=self.index, head_map=self.head_map)

    @property
    def heads(self) -> dict[int, list[int]]:
        """Per layer, the model's head index at each position of the ``head`` axis (every head,
        ``[0, 1, ...]``, unless the capture selected heads)."""
        return {layer: list(h) for layer, (h, _) in self.head_map.items()}

    @property
    def kv_heads(self) -> dict[int, list[int]]:
        """Per layer, the model's key/value head index at each position of the ``kv_head`` axis
        (of k and v)."""
        return {layer: list(kv) for layer, (_, kv) in self.head_map.items()}

    @property
    def n_tokens(self) -> int:
        return len(self.tokens) if self.tokens is not None else None

    def __repr__(self) -> str:
        shown = " ".join(self.tokens[:12]) + (" ..." if len(self.tokens) > 12 else "")
        return f"Example({self.n_tokens} tokens: {shown!r}, {len(self._keys)} keys)"


class CapturedBatch:
    """Padded batch arrays from one forward call and the span of each example in them.

    ``arrays`` maps keys to ``[batch, ...]`` arrays (padded); ``spans[i] = (start, stop)`` are
    the positions of example i's real tokens. ``keys`` is what examples expose (may include
    derived keys); defaults to the keys of ``arrays``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], spans, tokens, *, keys=None,
                 input_ids=None, meta=None, head_map=None):
        self.arrays = arrays
        self.head_map = dict(head_map or {})  # see Example.head_map
        self.spans = [(int(a), int(b)) for a, b in spans]
        self.tokens = tokens
        self.keys = tuple(keys) if keys is not None else tuple(arrays)
        self.input_ids = input_ids
        self.meta = meta

    def __len__(self) -> int:
        return len(self.spans)

    def packed_size(self, key: str) -> int:
        """Number of values :meth:`packed` returns for ``key`` (every row without padding)."""
        _, component = names.parse_key(key)
        return packed_size(component, self.arrays[key].shape, self.spans)

    def packed(self, key: str, dtype=np.float32, out: np.ndarray | None = None) -> np.ndarray:
        """Every example's unpadded array of ``key``, C-order flattened and concatenated in row
        order, as ``dtype`` (:func:`pack_rows` on the batch's array).

        >>> b = CapturedBatch({"blocks.0.attn.pattern": np.arange(2 * 1 * 3 * 3.).reshape(2, 1, 3, 3)},
        ...                   spans=[(0, 2), (0, 3)], tokens=None)
        >>> b.packed("blocks.0.attn.pattern", np.float16).tolist()
        [0.0, 1.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0]
        """
        import torch

        _, component = names.parse_key(key)
        return pack_rows(torch.from_numpy(self.arrays[key]), component, self.spans, dtype, out)

    def rows(self, start: int, stop: int) -> CapturedBatch:
        """The batch's rows ``start:stop`` (views of the same arrays)."""
        def cut(x):
            return None if x is None else x[start:stop]

        return CapturedBatch({key: a[start:stop] for key, a in self.arrays.items()},
                             self.spans[start:stop], cut(self.tokens), keys=self.keys,
                             input_ids=cut(self.input_ids), meta=cut(self.meta),
                             head_map=self.head_map)

    def example(self, row: int, index=None) -> Example:
        start, stop = self.spans[row]

        def get(key, row=row, start=start, stop=stop):
            _, component = names.parse_key(key)
            return self.arrays[key][row][unpad_index(component, start, stop)]

        ids = None if self.input_ids is None else self.input_ids[row, start:stop]
        return Example(
            self.tokens[row] if self.tokens is not None else None, self.keys, get,
            input_ids=ids,
            meta=None if self.meta is None else self.meta[row],
            index=index, head_map=self.head_map,
        )


class KeyedSequence(Sequence):
    """What a sequence of examples with ``keys`` knows about its layers and components."""

    keys: tuple[str, ...]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def metas(self) -> list[dict]:
        """Every example's metadata, in order (a stored run reads only its metadata)."""
        return [self[i].meta for i in range(len(self))]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({names.parse_key(k)[0] for k in self.keys}))

    @property
    def components(self) -> tuple[str, ...]:
        present = {names.parse_key(k)[1] for k in self.keys}
        return tuple(c for c in names.COMPONENTS if c in present)

    #: per layer, ``(query heads, kv heads)`` held by the head axes (see Example.heads)
    head_map: dict = {}

    @property
    def heads(self) -> dict[int, list[int]]:
        """Per layer (of this view), the model's head index at each position of the ``head``
        axis: ``capture.heads[3] == [7]`` after capturing with ``heads="3.7"``."""
        return {layer: list(h) for layer, (h, _) in self.head_map.items() if layer in self.layers}

    @property
    def kv_heads(self) -> dict[int, list[int]]:
        """Per layer, the model's key/value head index at each position of the ``kv_head`` axis."""
        return {layer: list(kv) for layer, (_, kv) in self.head_map.items()
                if layer in self.layers}

    def _repr_html_(self) -> str:
        """In a notebook: a one-line summary, then the interactive view of example 0."""
        import html

        head = f"<p><code>{html.escape(repr(self))}</code></p>"
        if not len(self) or "pattern" not in self.components:
            return head
        from .notebook import show

        return head + show(self, 0)._repr_html_()


class Capture(KeyedSequence):
    """A sequence of :class:`Example` (one per input), as returned by ``AttentionProbe.run``.

    ``capture[i]`` is an Example, ``capture[2:5]`` a smaller Capture; ``keys``, ``layers`` and
    ``components`` describe what was captured; :meth:`select` narrows the view. The examples
    may be a lazy sequence (a stored run): nothing is read until an example is indexed.
    """

    def __init__(self, examples: Sequence[Example], keys: Sequence[str], batch=None,
                 head_map=None):
        self._examples = examples
        self.keys: tuple[str, ...] = tuple(keys)
        if head_map is None:  # what the examples know (every example of a run shares it)
            head_map = batch.head_map if batch is not None else (
                examples[0].head_map if len(examples) else {})
        self.head_map = dict(head_map)
        #: the CapturedBatch behind a capture of one forward call (None otherwise)
        self.batch: CapturedBatch | None = batch

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Capture(list(self._examples[i]), self.keys, head_map=self.head_map)
        ex = self._examples[example_number(i, len(self))]
        return ex if ex._keys == self.keys else ex.narrowed(self.keys)

    def select(self, *, layers=None, components=None) -> Capture:
        """A view exposing only the given layers and components.

        >>> import numpy as np
        >>> b = CapturedBatch({"blocks.0.attn.q": np.zeros((1, 2, 3, 4)),
        ...                    "blocks.1.attn.q": np.zeros((1, 2, 3, 4))}, [(0, 3)], [list("abc")])
        >>> Capture([b.example(0)], b.keys).select(layers=[1]).keys
        ('blocks.1.attn.q',)
        """
        comps = set(names.normalize_components(components))
        layer_set = None if layers is None else {int(x) for x in ([layers] if isinstance(layers, int) else layers)}
        wanted = [k for k in self.keys
                  if names.parse_key(k)[1] in comps
                  and (layer_set is None or names.parse_key(k)[0] in layer_set)]
        missing_layers = (layer_set or set()) - set(self.layers)
        if missing_layers or not wanted:
            raise InputError(
                f"selection not in this capture: layers {sorted(missing_layers) or layers}, "
                f"components {sorted(comps)}; it holds layers {list(self.layers)} and "
                f"components {list(self.components)}"
            )
        return Capture(self._examples, wanted, head_map=self.head_map)

    def __repr__(self) -> str:
        return (f"Capture({len(self)} examples, layers {list(self.layers)}, "
                f"components {list(self.components)})")


def require_every_head(capture, what: str) -> None:
    """Refuse a capture (or example) that holds selected heads only (``--heads``): ``what``
    labels heads by their position on the head axis, which is the model's head index only
    when every head is there.

    A run file says so itself (its ``heads`` attribute); in memory, a selection shows in the
    head map as a layer whose heads are not ``0..n-1`` or layers of different head counts.
    """
    attrs = getattr(capture, "attrs", None) or {}
    head_map = getattr(capture, "head_map", None) or {}
    lists = [tuple(h) for h, _ in head_map.values()]
    partial = bool(attrs.get("heads")) or any(h != tuple(range(len(h))) for h in lists) or \
        len({len(h) for h in lists}) > 1
    if partial:
        raise InputError(f"{what} labels heads by their position and needs every head, but this "
                         "capture holds selected heads only (--heads / heads=); capture without "
                         "a head selection for it")
