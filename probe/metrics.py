"""Per-pattern metrics: pure numpy functions over ``[..., query, key]`` attention patterns.

Leading axes (layer, head, ...) pass through, so each function is vectorised over any stack of
patterns of one example; :func:`example_metrics` stacks an example's layers and heads.
Definitions are in each docstring; every function is tested on a hand-computed example.

Imports numpy, :mod:`probe.align` and :mod:`probe.names`.

>>> import numpy as np
>>> uniform = np.full((2, 4, 4), 0.25)          # [head, query, key]
>>> np.allclose(mean_row_entropy(uniform), np.log(4))
True
>>> first_token_attention(uniform).tolist()
[0.25, 0.25]
"""

from __future__ import annotations

import numpy as np

from .align import is_special, normalize
from .names import key, layers_of

#: Function words (closed classes: determiners, pronouns, prepositions, conjunctions,
#: auxiliaries and modals, particles) used by :func:`content_function_ratio`; any other
#: alphabetic word is a content word. Negation words are in the list.
FUNCTION_WORDS = frozenset("""
a an the this that these those my your his her its our their some any no every each either
neither all both few many much more most other such what which whose
i me you he him she it we us they them myself yourself himself herself itself ourselves
themselves who whom one someone something anyone anything nobody nothing none
of in on at by for with about against between into through during before after above below
to from up down out off over under again further than as until while since near onto upon
within without across along around behind beyond toward towards among via per
and but or nor so yet if because although though unless whether whereas
is am are was were be been being have has had having do does did doing
can could may might must shall should will would ought
not n't 's 'll 're 've 'd 'm there here then when where why how very too also just only
""".split())


def _f64(pattern):
    return np.asarray(pattern, dtype=np.float64)


def row_entropy(pattern: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each query row: ``[..., query, key] -> [..., query]``.

    ``H_i = -sum_j a_ij log a_ij`` with ``0 log 0 = 0``.
    """
    p = _f64(pattern)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(-1)


def mean_row_entropy(pattern: np.ndarray) -> np.ndarray:
    """Mean over query rows of :func:`row_entropy`: ``[..., query, key] -> [...]``.

    A sum over rows grows with sentence length and is not an entropy; the mean over rows is,
    and compares with :func:`uniform_entropy_bound`.
    """
    return row_entropy(pattern).mean(-1)


def uniform_entropy_bound(pattern: np.ndarray) -> np.ndarray:
    """Mean over rows of ``log(number of keys a row may attend to)``: ``[...]``.

    The entropy of uniform attention; keys a row may attend to are those with non-zero weight
    (masked keys get exactly 0), so causal rows count only earlier tokens.

    >>> causal = np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None]
    >>> bool(np.isclose(uniform_entropy_bound(causal), np.log([1, 2, 3]).mean()))
    True
    """
    allowed = (_f64(pattern) > 0).sum(-1)
    return np.log(np.maximum(allowed, 1)).mean(-1)


def first_token_attention(pattern: np.ndarray) -> np.ndarray:
    """Mean over queries of the weight on key 0 ([CLS] or BOS): ``[..., query, key] -> [...]``."""
    return _f64(pattern)[..., :, 0].mean(-1)


def first_token_max(pattern: np.ndarray) -> np.ndarray:
    """Max over queries of the weight on key 0: ``[...]``."""
    return _f64(pattern)[..., :, 0].max(-1)


def received(pattern: np.ndarray) -> np.ndarray:
    """Mean over queries of the attention each key receives: ``[..., key]`` (sums to 1)."""
    return _f64(pattern).mean(-2)


def sink_token(pattern: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The key that absorbs most attention, whatever it is, and its share: ``([...], [...])``.

    share = mean over queries of the weight on that key.

    >>> p = np.array([[[0.1, 0.9], [0.2, 0.8]]])
    >>> index, share = sink_token(p)
    >>> index.tolist(), share.round(2).tolist()
    ([1], [0.85])
    """
    r = received(pattern)
    index = r.argmax(-1)
    return index, np.take_along_axis(r, index[..., None], -1)[..., 0]


def self_attention(pattern: np.ndarray) -> np.ndarray:
    """Mean over queries of the diagonal weight ``a_ii``: ``[...]``."""
    return np.diagonal(_f64(pattern), axis1=-2, axis2=-1).mean(-1)


def offset_attention(pattern: np.ndarray, offset: int) -> np.ndarray:
    """Mean over the queries that have one of the weight on key ``i + offset``: ``[...]``.

    ``offset=-1`` is the previous-token share, ``+1`` the next-token share.

    >>> p = np.eye(3)[[0, 0, 1]]     # rows 1, 2 attend to the previous token
    >>> offset_attention(p, -1).item(), offset_attention(p, 1).item()
    (1.0, 0.0)
    """
    p = _f64(pattern)
    n = p.shape[-1]
    if abs(offset) >= n:
        return np.full(p.shape[:-2], np.nan)
    return np.diagonal(p, offset=offset, axis1=-2, axis2=-1).mean(-1)


def local_attention(pattern: np.ndarray, window: int = 1) -> np.ndarray:
    """Mean over queries of the mass on keys within ``|i - j| <= window``: ``[...]``."""
    p = _f64(pattern)
    n = p.shape[-1]
    i, j = np.indices((p.shape[-2], n))
    return (p * (np.abs(i - j) <= window)).sum(-1).mean(-1)


def mean_attention_distance(pattern: np.ndarray) -> np.ndarray:
    """Mean over queries of ``sum_j a_ij |i - j|`` (in tokens): ``[...]``."""
    p = _f64(pattern)
    i, j = np.indices(p.shape[-2:])
    return (p * np.abs(i - j)).sum(-1).mean(-1)


def words_of(tokens: list[str]) -> list[list[int]]:
    """Group token positions into words: WordPiece ``##`` pieces join the previous token;
    for byte-level BPE (``Ġ``) and SentencePiece (``▁``) a token without the marker joins the
    previous one. Special tokens are left out.

    >>> words_of(["[CLS]", "un", "##believ", "##able", "story", "[SEP]"])
    [[1, 2, 3], [4]]
    >>> words_of(["<s>", "The", "Ġunbeliev", "able", "Ġstory", "</s>"])
    [[1], [2, 3], [4]]
    """
    marker_style = any(t.startswith(("Ġ", "▁")) for t in tokens)
    words: list[list[int]] = []
    for i, t in enumerate(tokens):
        if is_special(t):
            continue
        joins = t.startswith("##") if not marker_style else not t.startswith(("Ġ", "▁"))
        if joins and words and words[-1][-1] == i - 1:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def word_text(tokens, word) -> str:
    """A word's text from its tokens, normalised as in :func:`probe.align.normalize`."""
    return "".join(normalize(tokens[i]) for i in word)


def content_function_ratio(pattern: np.ndarray, tokens: list[str]) -> np.ndarray:
    """Attention received per content word over attention received per function word.

    On whole words (subword pieces merged by :func:`words_of`): a word receives the sum over
    its tokens of :func:`received`; the ratio is the mean over content words divided by the
    mean over function words (:data:`FUNCTION_WORDS`; punctuation counts as neither). NaN when
    the sentence lacks either kind of word, or function words receive nothing.

    Uniform attention over "the black cat ##s": the words the 0.25, black 0.25, cats 0.5;
    content (0.25 + 0.5) / 2 over function 0.25:

    >>> p = np.full((1, 4, 4), 0.25)
    >>> content_function_ratio(p, ["the", "black", "cat", "##s"]).item()
    1.5
    """
    r = received(pattern)
    content, function = [], []
    for word in words_of(tokens):
        text = word_text(tokens, word)
        if not any(c.isalnum() for c in text):
            continue
        (function if text in FUNCTION_WORDS else content).append(r[..., word].sum(-1))
    if not content or not function:
        return np.full(r.shape[:-1], np.nan)
    c, f = np.mean(content, axis=0), np.mean(function, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, c / np.where(f > 0, f, 1), np.nan)


def attention_rollout(patterns: np.ndarray, residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): ``[layer, head, n, n] -> [n, n]``.

    Heads are averaged per layer; with ``residual`` each layer's matrix is ``0.5 A + 0.5 I``
    (the residual connection), rows renormalised; the layers are multiplied from the first:
    ``R = A_L ... A_1``. Row i of R says how much each input token flows into position i.

    Two layers of uniform attention: each is ``[[.75, .25], [.25, .75]]`` with the residual, and
    their product is ``[[.625, .375], [.375, .625]]``.

    >>> attention_rollout(np.full((2, 1, 2, 2), 0.5)).round(3).tolist()
    [[0.625, 0.375], [0.375, 0.625]]
    """
    p = _f64(patterns).mean(1)
    n = p.shape[-1]
    rollout = np.eye(n)
    for layer in p:
        a = 0.5 * layer + 0.5 * np.eye(n) if residual else layer
        a = a / a.sum(-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def token_importance(example, method: str = "raw", layers=None) -> np.ndarray:
    """Importance of each token of an example: ``[token]``, summing to 1.

    - ``raw``: attention received (mean over queries), averaged over layers and heads;
    - ``value_weighted``: the same with value-weighted attention, each row normalised to sum 1
      (the share of the row's output each key contributes);
    - ``rollout``: the mean over query rows of :func:`attention_rollout`.
    """
    layers = list(layers) if layers is not None else _layers(example)
    if method == "raw":
        p = np.stack([example[key(l, "pattern")] for l in layers])
        out = received(p).mean((0, 1))
    elif method == "value_weighted":
        vw = _f64(np.stack([value_weighted_of(example, l) for l in layers]))
        vw = vw / vw.sum(-1, keepdims=True)
        out = received(vw).mean((0, 1))
    elif method == "rollout":
        p = np.stack([example[key(l, "pattern")] for l in layers])
        out = attention_rollout(p).mean(0)
    else:
        raise ValueError(f"unknown method {method!r}: raw, value_weighted or rollout")
    return out / out.sum()


def value_weighted_of(example, layer: int) -> np.ndarray:
    """``[head, query, key]`` value-weighted attention of a layer: captured, or derived from
    pattern and value_norm (``pattern * value_norm[:, None, :]``) when only those were kept."""
    name = key(layer, "value_weighted")
    if name in example:
        return example[name]
    return example[key(layer, "pattern")] * example[key(layer, "value_norm")][:, None, :]


def _layers(example) -> list[int]:
    return layers_of(example, "pattern")


#: per-head profile metrics, in :func:`example_metrics` and the head summary
PROFILE = ("first_token", "first_token_max", "sink_share", "self", "previous", "next", "local",
           "distance", "entropy", "entropy_bound", "entropy_norm", "content_function_ratio")


def example_metrics(example, layers=None, window: int = 1) -> dict[str, np.ndarray]:
    """Every per-head metric of one example: ``{name: [layer, head]}`` plus ``sink_token``."""
    layers = list(layers) if layers is not None else _layers(example)
    p = _f64(np.stack([example[key(l, "pattern")] for l in layers]))
    sink, share = sink_token(p)
    entropy, bound = mean_row_entropy(p), uniform_entropy_bound(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(bound > 0, entropy / np.where(bound > 0, bound, 1), np.nan)
    return {"first_token": first_token_attention(p), "first_token_max": first_token_max(p),
            "sink_token": sink, "sink_share": share, "self": self_attention(p),
            "previous": offset_attention(p, -1), "next": offset_attention(p, 1),
            "local": local_attention(p, window), "distance": mean_attention_distance(p),
            "entropy": entropy, "entropy_bound": bound, "entropy_norm": norm,
            "content_function_ratio": content_function_ratio(p, example.tokens)}


#: head classes, checked in this order on the profile averaged over examples
HEAD_CLASSES = (("sink", "sink_share", 0.5), ("previous-token", "previous", 0.5),
                ("next-token", "next", 0.5), ("self", "self", 0.5), ("local", "local", 0.7),
                ("broad", "entropy_norm", 0.8))


def classify_heads(profile: dict[str, np.ndarray]) -> np.ndarray:
    """A class per head from its mean profile (``[layer, head]`` arrays): the first rule of
    :data:`HEAD_CLASSES` whose metric reaches its threshold, else ``mixed``.

    >>> classify_heads({"sink_share": np.array([[0.9, 0.1]]), "previous": np.array([[0.0, 0.6]]),
    ...                 "next": np.zeros((1, 2)), "self": np.zeros((1, 2)),
    ...                 "local": np.zeros((1, 2)), "entropy_norm": np.zeros((1, 2))}).tolist()
    [['sink', 'previous-token']]
    """
    shape = next(iter(profile.values())).shape
    out = np.full(shape, "mixed", dtype=object)
    for name, metric, threshold in reversed(HEAD_CLASSES):
        out = np.where(np.nan_to_num(profile[metric]) >= threshold, name, out)
    return out
