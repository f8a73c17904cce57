"""probe: exact, architecture-independent capture and analysis of transformer attention.

Imports :mod:`probe.architectures`, :mod:`probe.capture`, :mod:`probe.captures`,
:mod:`probe.encdec`, :mod:`probe.errors`, :mod:`probe.models`, :mod:`probe.names`,
:mod:`probe.notebook`, :mod:`probe.patching`, :mod:`probe.readers` and :mod:`probe.store`.

>>> from probe import AttentionProbe, load_model
>>> model, tokenizer = load_model()
>>> with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
...     caps = p.run(["A robin is a bird."])
>>> caps[0]["blocks.0.attn.pattern"].sum(-1).round(5).min()
np.float32(1.0)
"""

from .architectures import SUPPORTED_MODEL_TYPES, attention_layers
from .capture import AttentionProbe
from .captures import Capture, Example
from .encdec import EncoderDecoderProbe
from .errors import InputError, ProbeError, UnsupportedModelError
from .models import default_model_path, load_model
from .names import AXES, COMPONENTS, key, kv_head_of, parse_key
from .notebook import compare, show
from .patching import Patcher
from .readers import bundled_path
from .store import Run, SchemaError, open_run

__version__ = "0.1.0"

__all__ = [
    "AXES", "COMPONENTS", "AttentionProbe", "EncoderDecoderProbe", "bundled_path", "Capture", "Example", "InputError", "Patcher", "ProbeError",
    "SUPPORTED_MODEL_TYPES", "UnsupportedModelError", "attention_layers", "default_model_path",
    "compare", "key", "kv_head_of", "load_model", "open_run", "parse_key", "Run", "SchemaError", "show",
    "__version__",
]
