"""Time to build an ``AttentionProbe``: architecture detection reading each attention module's
class source and eager function afresh (what detection did before 663c129: ``inspect.getsource``
parses the whole model file per call, once per layer) against the normal build, which reads
each class and function once per process, measured in the same run.

Models: the bundled MiniLM (6 layers) and a Llama built from a config with 32 small layers
(the layer count of a 7-8B model; weights are random and tiny, the detection work is per
layer). Each figure is the best of ``ROUNDS`` builds.

    python benchmarks/probe_build.py
"""

from __future__ import annotations

import functools
import time

import transformers as T

from probe import AttentionProbe, load_model
from probe.architectures import detection

ROUNDS = 7


def best_build_ms(model) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        AttentionProbe(model)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def without_reuse(model) -> float:
    """Build time with detection's two caches replaced by ones that keep nothing."""
    kept = detection._class_uses_interface, detection._eager_function_surprise
    try:
        for cached in kept:
            setattr(detection, cached.__name__, functools.lru_cache(maxsize=0)(cached.__wrapped__))
        return best_build_ms(model)
    finally:
        detection._class_uses_interface, detection._eager_function_surprise = kept


def main() -> None:
    llama = T.LlamaModel(T.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=32, num_attention_heads=4,
                                       num_key_value_heads=2))
    print(f"{'model':24s} {'reading ms':>10s} {'reusing ms':>10s} {'ratio':>7s}")
    for name, model in (("MiniLM (6 layers)", load_model()[0]), ("Llama config (32 layers)", llama)):
        reading, reusing = without_reuse(model), best_build_ms(model)
        print(f"{name:24s} {reading:10.1f} {reusing:10.1f} {reading / reusing:7.1f}")


if __name__ == "__main__":
    main()
