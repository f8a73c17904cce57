"""A model loaded with accelerate's device_map disk offload: its output projections' weights sit
on the meta device, and value norms must read the real W_O through the offload hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T

from conftest import SENTENCES, _tiny
from probe import AttentionProbe

pytest.importorskip("accelerate", reason="accelerate is not installed; device_map offload "
                    "needs it (pip install accelerate)")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_disk_offloaded_model_captures_exactly(arch, tokenizer, tmp_path):
    model = _tiny(arch)
    model.save_pretrained(tmp_path / "model")
    stack = "layers" if arch == "llama" else "h"
    device_map = {name: "cpu" for name, _ in model.named_children()}
    device_map.pop(stack)
    device_map.update({f"{stack}.0": "cpu", f"{stack}.1": "disk"})
    offloaded = T.AutoModel.from_pretrained(tmp_path / "model", device_map=device_map,
                                            offload_folder=str(tmp_path / "offload")).eval()
    with AttentionProbe(offloaded, tokenizer) as p:
        assert p.layers[1].out_proj.weight.device.type == "meta"  # the case under test
        got = p.run(SENTENCES)
    with AttentionProbe(model, tokenizer) as p:
        want = p.run(SENTENCES)
    for a, b in zip(got, want):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6, err_msg=key)
    assert p.layers[1].out_proj.weight.device.type != "meta"
    assert torch.equal(
        AttentionProbe(offloaded).layers[1].output_weight(),
        AttentionProbe(model).layers[1].output_weight())


_TP_SCRIPT = '''
import os, sys
import numpy as np, transformers as T
from probe import AttentionProbe, load_model
model = T.AutoModel.from_pretrained(sys.argv[1], tp_plan="auto")
_, tokenizer = load_model()
with AttentionProbe(model, tokenizer) as p:
    ex = p.run(sys.argv[3:])[-1]
np.savez(os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.npz"), **dict(ex.items()))
'''


def test_tensor_parallel_ranks_capture_their_heads(tokenizer, tmp_path):
    """Two CPU processes (gloo) with tp_plan="auto": each rank captures the heads it computes,
    value norms through its own shard of W_O; the ranks' heads together equal one process."""
    import os
    import subprocess
    import sys

    model = _tiny("llama")
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "tp.py").write_text(_TP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          str(tmp_path / "tp.py"), str(tmp_path / "model"), str(tmp_path),
                          *SENTENCES[:2]], env=env, capture_output=True, text=True, timeout=300)
    if run.returncode != 0 and "tensor parallel" in run.stderr.lower() and "not" in run.stderr:
        pytest.skip(f"this transformers cannot do tensor parallelism here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    with AttentionProbe(model, tokenizer) as p:
        want = p.run(SENTENCES[:2])[-1]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for key in want:
        got = np.concatenate([r[key] for r in ranks], axis=0)  # rank r holds heads r*H/2...
        assert got.shape == want[key].shape, key
        np.testing.assert_allclose(got, want[key], rtol=1e-5, atol=1e-6, err_msg=key)
