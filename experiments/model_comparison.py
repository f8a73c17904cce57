"""Compare models on the same sentences: architecture, attention pattern metrics, speed.

    python experiments/model_comparison.py [MODEL ...]

With no arguments it compares the bundled all-MiniLM-L6-v2 with tiny randomly initialised
GPT-2, Llama (grouped-query) and DistilBERT models that this script saves under OUT/models
(so it works offline); pass hub names or local folders to compare real models where a
network exists. Writes architecture.csv, metrics.csv, speed.csv and comparison.md to OUT.
"""

import sys
from pathlib import Path

import torch
import transformers as T

from probe.cli import main as probe_main
from probe.models import default_model_path

# ---- config -------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "model_comparison"
TEXTS = ROOT / "data" / "sentences.txt"
TINY = {
    "tiny-gpt2": T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=30522,
                              bos_token_id=101, eos_token_id=102),
    "tiny-llama": T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=128, vocab_size=30522,
                                max_position_embeddings=128, bos_token_id=101, eos_token_id=102,
                                pad_token_id=0),
    "tiny-distilbert": T.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                          vocab_size=30522, max_position_embeddings=128),
}
# -------------------------------------------------------------------------------------------


def save_tiny_models() -> list[str]:
    """Save each tiny model with the bundled tokenizer, so it loads like any local model."""
    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    paths = []
    for name, config in TINY.items():
        path = OUT / "models" / name
        if not (path / "config.json").exists():
            torch.manual_seed(0)
            T.AutoModel.from_config(config).save_pretrained(path)
            tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


if __name__ == "__main__":
    models = sys.argv[1:] or ["bundled", *save_tiny_models()]
    sys.exit(probe_main(["compare-models", *models, "--texts", str(TEXTS), "--out", str(OUT)]))
