"""Attention basics, for teaching: what attention does that a token-wise layer does not.

    python experiments/attention_basics.py

1. A toy input of 5 tokens (4 dimensions each). A token-wise linear layer maps each token on
   its own: changing token 2 changes output row 2 only. A single attention layer mixes tokens:
   changing token 2 changes every output row, and each row of attention weights sums to 1.
2. The real model (bundled all-MiniLM-L6-v2, captured with AttentionProbe): how much each
   head attends to the first token ([CLS]) for a sentence, the full grid of heads, and one
   head's pattern with token labels.
Figures go to OUT.
"""

from pathlib import Path

import numpy as np

from probe import AttentionProbe, load_model
from probe import metrics as M
from probe import plots

# ---- config -------------------------------------------------------------------------------
OUT = Path(__file__).resolve().parent.parent / "out" / "attention_basics"
SENTENCE = "The robin is not a bird, but the penguin is."
SEED = 0
# -------------------------------------------------------------------------------------------


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def toy() -> None:
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(5, 4))                      # [token, d_model]
    w = rng.normal(size=(4, 4))
    wq, wk, wv = (rng.normal(size=(4, 4)) for _ in range(3))

    def linear(x):
        return x @ w                                 # each token on its own

    def attention(x):
        q, k, v = x @ wq, x @ wk, x @ wv
        weights = softmax(q @ k.T / np.sqrt(4))      # [query, key]
        return weights @ v, weights

    x2 = x.copy()
    x2[2] += 1.0                                     # change token 2 only
    lin_change = np.abs(linear(x2) - linear(x)).sum(-1)
    att_out, weights = attention(x)
    att_change = np.abs(attention(x2)[0] - att_out).sum(-1)
    print("change token 2 of 5; how much each output row changes:")
    print("  token-wise linear :", np.round(lin_change, 3), "(only row 2)")
    print("  attention         :", np.round(att_change, 3), "(every row: attention mixes tokens)")
    print("  attention rows sum to", np.round(weights.sum(-1), 6))
    assert (lin_change[[0, 1, 3, 4]] == 0).all() and (att_change > 0).all()
    assert np.allclose(weights.sum(-1), 1)

    fig, axes = plots.plt.subplots(1, 3, figsize=(12, 3.5), constrained_layout=True)
    axes[0].bar(range(5), lin_change)
    axes[0].set_title("token-wise linear: output change")
    axes[1].bar(range(5), att_change, color="tab:orange")
    axes[1].set_title("attention: output change")
    for ax in axes[:2]:
        ax.set_xlabel("output token (token 2 was changed)")
    im = axes[2].imshow(weights, cmap="viridis", vmin=0, vmax=1)
    axes[2].set_title("attention weights (rows sum to 1)")
    axes[2].set_xlabel("key")
    axes[2].set_ylabel("query")
    fig.colorbar(im, ax=axes[2])
    plots.save(fig, OUT / "toy_linear_vs_attention")


def real_model() -> None:
    model, tokenizer = load_model()
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        ex = p.run([SENTENCE])[0]
    patterns = np.stack([ex[f"blocks.{l}.attn.pattern"] for l in range(6)])   # [layer, head, q, k]
    first = M.first_token_attention(patterns)                                  # [layer, head]
    print(f"\n{SENTENCE!r}: {len(ex.tokens)} tokens: {' '.join(ex.tokens)}")
    print("mean attention to [CLS] per layer (over heads):", np.round(first.mean(1), 3))
    layer, head = np.unravel_index(first.argmax(), first.shape)
    print(f"the head most focused on [CLS]: layer {layer}, head {head} ({first[layer, head]:.2f})")
    plots.save(plots.first_token_bars(first), OUT / "first_token_attention")
    plots.save(plots.head_grid(ex), OUT / "head_grid")
    plots.save(plots.pattern_figure(ex, int(layer), int(head)), OUT / f"pattern_layer{layer}_head{head}")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    toy()
    real_model()
    print(f"\nfigures in {OUT}")
