"""Causal interventions (probe.patching): exactness against hand-written references, scoping,
batching, alignment and bad input. Tiny random models of every family; a few MiniLM checks."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import transformers as T
from conftest import ARCHS, OUT_PROJ, VOCAB, _tiny

from probe.errors import InputError
from probe.patch_ops import Ops
from probe.patch_pairs import head_specs, pair_setup, sweep
from probe.patching import Patcher, kv_group

EQUAL = ("A robin is a bird.", "A robin is the bird.")            # equal length, one word replaced
UNEQUAL = ("A robin is a bird.", "A robin is not a bird.")
OTHER = ("Penguins can swim well.", "Penguins cannot swim well.")


def _hooks(model):
    return {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
            for name, m in model.named_modules()}


def _pooled(hidden, ids, tokenizer):
    keep = ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    return (hidden.double() * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)


def _encode(tokenizer, text):
    return tokenizer([text], return_tensors="pt")["input_ids"]


# ----------------------------------------------------------------------------- exactness


def test_self_patch_changes_nothing_bit_for_bit(tiny, tokenizer):
    """Patching a run with itself (z, pattern, value, block input) leaves the readout
    bit-identical at the same batch shape; a batched sweep finds no effect."""
    with Patcher(tiny, tokenizer) as pt:
        setup = pair_setup(pt, "self", EQUAL[0], EQUAL[0])
        src = pt.source([setup.source_ids])[0]
        base = pt.forward([setup.target_ids])
        for component in ("z", "pattern", "value", "resid"):
            ops = Ops()
            for layer in range(pt.n_layers):
                heads = range(pt.n_kv_heads if component == "value" else pt.n_heads)
                for head in ([0] if component == "resid" else heads):
                    ops.add_patch(component, layer, head, [0], setup, src, pt.n_heads // pt.n_kv_heads)
            patched = pt.forward([setup.target_ids], ops.finish(pt.device))
            assert torch.equal(patched, base), component
        result = sweep(pt, [setup], head_specs(pt, "z", whole_layers=True), batch_rows=64)
        # the sweep's patched rows run in a larger batch than its base row, and CPU kernels
        # may block a matmul differently by batch size: equal up to float32 rounding, not bits
        assert np.abs(result.raw).max() < 1e-6


def test_full_residual_patch_reproduces_source(tiny, tokenizer):
    with Patcher(tiny, tokenizer) as pt:
        setup = pair_setup(pt, "eq", *EQUAL)
        assert len(setup.query[0]) == len(setup.target_ids) == len(setup.source_ids)
        src = pt.source([setup.source_ids])[0]
        base = pt.forward([setup.target_ids])
        assert not torch.allclose(base[0], src.readout, atol=1e-4)
        for layer in range(pt.n_layers):
            ops = Ops()
            ops.add_patch("resid", layer, 0, [0], setup, src, 1)
            patched = pt.forward([setup.target_ids], ops.finish(pt.device))
            torch.testing.assert_close(patched[0], src.readout, atol=1e-5, rtol=1e-5)


def test_zero_ablation_equals_hand_written_hook(tiny, tokenizer, arch):
    ids = _encode(tokenizer, UNEQUAL[1])
    n_heads = Patcher(tiny, tokenizer).n_heads
    layer, head = 1, n_heads - 1
    out_proj = tiny.get_submodule(OUT_PROJ[arch].format(l=layer))

    def zero_slice(module, args):
        x = args[0].clone()
        d = x.shape[-1] // n_heads
        x[..., head * d:(head + 1) * d] = 0
        return (x,)

    handle = out_proj.register_forward_pre_hook(zero_slice)
    try:
        with torch.no_grad():
            reference = tiny(input_ids=ids).last_hidden_state
    finally:
        handle.remove()
    with Patcher(tiny, tokenizer) as pt, pt.ablate([(layer, head)], "zero"), torch.no_grad():
        ours = tiny(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        plain = tiny(input_ids=ids).last_hidden_state
    assert not torch.allclose(plain, reference, atol=1e-4)   # the head mattered


def test_one_head_effect_equals_hand_written_patch(tiny, tokenizer, arch):
    target, source = EQUAL
    layer, head = 1, 1
    out_proj = tiny.get_submodule(OUT_PROJ[arch].format(l=layer))
    n_heads = Patcher(tiny, tokenizer).n_heads
    t_ids, s_ids = _encode(tokenizer, target), _encode(tokenizer, source)
    stored = {}

    def keep(module, args):
        stored["x"] = args[0].detach().clone()

    def replace(module, args):
        x = args[0].clone()
        d = x.shape[-1] // n_heads
        x[..., head * d:(head + 1) * d] = stored["x"][..., head * d:(head + 1) * d]
        return (x,)

    with torch.no_grad():
        h = out_proj.register_forward_pre_hook(keep)
        src = _pooled(tiny(input_ids=s_ids).last_hidden_state, s_ids, tokenizer)
        h.remove()
        base = _pooled(tiny(input_ids=t_ids).last_hidden_state, t_ids, tokenizer)
        h = out_proj.register_forward_pre_hook(replace)
        patched = _pooled(tiny(input_ids=t_ids).last_hidden_state, t_ids, tokenizer)
        h.remove()
    cos = torch.nn.functional.cosine_similarity
    c_base, c_patch = float(cos(base, src)), float(cos(patched, src))
    expected = (c_patch - c_base) / (1 - c_base)
    with Patcher(tiny, tokenizer, min_gap=0) as pt:
        r = pt.effect(target, source, [(layer, head)])
    assert r.effect == pytest.approx(expected, abs=2e-5)
    assert r.gap == pytest.approx(1 - c_base, abs=1e-6)


# ----------------------------------------------------------------------------- batching


def _pairs(pt):
    return [pair_setup(pt, i, a, b) for i, (a, b) in enumerate([UNEQUAL, EQUAL, OTHER])]


def test_batched_sweep_equals_one_at_a_time_and_padded_equals_alone(tiny, tokenizer):
    with Patcher(tiny, tokenizer, min_gap=0) as pt:
        setups = _pairs(pt)
        specs = head_specs(pt, "z", whole_layers=True) + head_specs(pt, "pattern", heads=[(1, 0)])
        batched = sweep(pt, setups, specs, batch_rows=200).raw
        assert pt.reuse   # the layers below were run once per pair (no fallback to full rows)
        pt.reuse = False
        one = np.concatenate([sweep(pt, [s], specs, batch_rows=1).raw for s in setups])
        alone = sweep(pt, setups[:1], specs, batch_rows=200).raw
    assert np.abs(batched).max() > 1e-4
    np.testing.assert_allclose(batched, one, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(batched[:1], alone, atol=1e-6, rtol=1e-5)


def test_sdpa_and_eager_loaded_models_give_the_same_effects(tokenizer):
    effects = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(7)
        config = ARCHS["llama"][0]()
        model = T.AutoModel.from_config(config, attn_implementation=impl).eval()
        with Patcher(model, tokenizer, min_gap=0) as pt:
            effects[impl] = sweep(pt, _pairs(pt), head_specs(pt, "z")).raw
        assert model.config._attn_implementation == impl
    np.testing.assert_allclose(effects["sdpa"], effects["eager"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch_name", ["llama", "qwen3", "mistral"])
def test_patching_one_kv_group_changes_only_its_query_heads(tokenizer, arch_name):
    model = _tiny(arch_name)
    with Patcher(model, tokenizer) as pt:
        setup = pair_setup(pt, "eq", *EQUAL)
        src = pt.source([setup.source_ids])[0]
        base, patched = {}, {}
        pt.forward([setup.target_ids], record=base)
        ops = Ops()
        kv = pt.n_kv_heads - 1
        ops.add_patch("value", 1, kv, [0], setup, src, pt.n_heads // pt.n_kv_heads)
        pt.forward([setup.target_ids], ops.finish(pt.device), record=patched)
    changed = [h for h in range(pt.n_heads) if not torch.equal(base["z"][1][0, h], patched["z"][1][0, h])]
    assert changed == kv_group(pt.n_heads, pt.n_kv_heads, kv)
    assert torch.equal(base["z"][0], patched["z"][0])


# ----------------------------------------------------------------------------- scoping


def test_outputs_after_leaving_equal_before_also_after_an_exception(tiny, tokenizer):
    ids = _encode(tokenizer, UNEQUAL[1])
    hooks = _hooks(tiny)
    impl = tiny.config._attn_implementation
    with torch.no_grad():
        before = tiny(input_ids=ids).last_hidden_state
    with pytest.raises(KeyError):
        with Patcher(tiny, tokenizer) as pt, pt.ablate([(0, 0), (1, 1)], "zero"):
            with torch.no_grad():
                inside = tiny(input_ids=ids).last_hidden_state
            raise KeyError("boom")
    assert not torch.equal(inside, before)
    with Patcher(tiny, tokenizer) as pt:
        with pytest.raises(KeyError), pt.patch(*UNEQUAL, heads=[(1, 0)], component="pattern"):
            raise KeyError("boom")
        assert pt.probe.intervention is None
    with torch.no_grad():
        after = tiny(input_ids=ids).last_hidden_state
    assert torch.equal(after, before)
    assert _hooks(tiny) == hooks
    assert tiny.config._attn_implementation == impl


def test_mean_and_resample_ablation(minilm):
    model, tokenizer = minilm
    ids = _encode(tokenizer, UNEQUAL[0])
    with Patcher(model, tokenizer) as pt:
        with pt.ablate([(3, 4)], "resample", source=UNEQUAL[0]), torch.no_grad():
            same = model(input_ids=ids).last_hidden_state
        with pt.ablate([(3, 4)], "mean", reference=[OTHER[0], EQUAL[1]]), torch.no_grad():
            mean = model(input_ids=ids).last_hidden_state
        with torch.no_grad():
            plain = model(input_ids=ids).last_hidden_state
    assert torch.equal(same, plain)              # resampling from itself changes nothing
    assert not torch.allclose(mean, plain, atol=1e-4)


# ----------------------------------------------------------------------------- alignment


def test_pattern_patch_reweights_the_targets_values(tiny, tokenizer):
    """z after a pattern patch = (source pattern mapped onto the target's keys) @ target values;
    other heads and rows outside the patched positions keep their own."""
    with Patcher(tiny, tokenizer) as pt:
        setup = pair_setup(pt, "neg", *UNEQUAL)             # source has the extra "not"
        src = pt.source([setup.source_ids])[0]
        base, patched = {}, {}
        pt.forward([setup.target_ids], record=base)
        ops = Ops()
        ops.add_patch("pattern", 1, 0, [0], setup, src, pt.n_heads // pt.n_kv_heads)
        pt.forward([setup.target_ids], ops.finish(pt.device), record=patched)
    t, s = setup.query
    kt, ks = setup.keys
    expected = torch.zeros(len(t), len(setup.target_ids))
    expected[:, kt] = src.pattern[1, 0][s][:, ks]
    assert float(expected.sum(-1).min()) < 1.0 - 1e-3   # the source's weight on "not" is left out
    v = base["v"][1][0, 0 // (pt.n_heads // pt.n_kv_heads)]
    torch.testing.assert_close(patched["z"][1][0, 0][t], expected @ v, atol=1e-6, rtol=1e-5)
    assert torch.equal(patched["pattern"][1][0, 0][t], expected)
    assert torch.equal(patched["z"][1][0, 1:], base["z"][1][0, 1:])


def test_correspondence_maps_equal_replacements_only():
    from probe.patch_pairs import correspondence

    assert correspondence(["a", "is", "b"], ["a", "isn", "'", "t", "b"]) == ([0, 2], [0, 4])
    assert correspondence(["a", "is", "b"], ["a", "was", "b"]) == ([0, 1, 2], [0, 1, 2])


def test_unequal_pairs_patch_only_aligned_positions(tokenizer):
    model = _tiny("bert")
    with Patcher(model, tokenizer) as pt:
        setup = pair_setup(pt, "neg", UNEQUAL[1], UNEQUAL[0])   # target has "not", source has not
        assert setup.target_tokens[4] == "not" and 4 not in setup.query[0].tolist()
        src = pt.source([setup.source_ids])[0]
        base, patched = {}, {}
        pt.forward([setup.target_ids], record=base)
        ops = Ops()
        ops.add_patch("z", 1, 2, [0], setup, src, 1)
        pt.forward([setup.target_ids], ops.finish(pt.device), record=patched)
    z_base, z_new = base["z"][1][0, 2], patched["z"][1][0, 2]
    assert torch.equal(z_new[4], z_base[4])                   # no counterpart: untouched
    t, s = setup.query
    assert torch.equal(z_new[t], src.z[1, 2][s])              # aligned: the source's z
    assert torch.equal(patched["z"][1][0, 1], base["z"][1][0, 1])


def test_pair_without_alignment_is_reported_and_skipped(tmp_path, tiny_model_dir):
    path = tmp_path / "pairs.jsonl"
    rows = [{"id": "ok", "original": UNEQUAL[0], "counterfactual": UNEQUAL[1], "kind": "copula"},
            {"id": "none", "original": "Cats purr.", "counterfactual": "Dogs bark!", "kind": "copula"},
            {"id": "ok2", "original": OTHER[0], "counterfactual": OTHER[1], "kind": "copula"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    code = _cli(["--pairs", str(path), "--out", str(out), "--model", str(tiny_model_dir),
                 "--positions", "aligned", "--per-pair", "--resamples", "50", "--top", "1"])
    assert code == 0
    status = (out / "patch_status.csv").read_text()
    assert "none,copula,none,no aligned content tokens" in status
    header = (out / "patch.csv").read_text().splitlines()[0]
    assert header == "layer,head,kind,n_pairs,n_clusters,estimate,ci_low,ci_high,p,q"
    per_pair = (out / "patch_pairs.csv").read_text()
    assert per_pair.startswith("id,layer,head,effect") and "\nnone," not in per_pair
    assert (out / "figures" / "patch_heatmap.png").exists() and (out / "COMPLETE.json").exists()
    summary = (out / "summary.md").read_text()  # 2 pairs, 2 clusters: nothing can be significant
    assert "- copula: 2 cluster(s): no head could reach q < 0.05 (p >= 0.5)" in summary


def _cli(argv):
    from probe.patch_cli import add_patch_parser

    parser = argparse.ArgumentParser()
    add_patch_parser(parser.add_subparsers())
    args = parser.parse_args(["patch", *argv])
    return args.func(args)


# ----------------------------------------------------------------------------- logit metric


def test_logit_metric_on_lm_heads(tokenizer):
    torch.manual_seed(3)
    mlm = T.BertForMaskedLM(ARCHS["bert"][0]()).eval()
    torch.manual_seed(3)
    lm = T.GPT2LMHeadModel(ARCHS["gpt2"][0]()).eval()
    for model in (mlm, lm):
        with Patcher(model, tokenizer, min_gap=0) as pt:
            assert pt.metric == "logit"
            r = pt.effect(*UNEQUAL, heads=[(1, 0)], target_token="not")
            full = pt.effect(*EQUAL, heads=[(0, 0)], component="z", target_token="bird")
        assert np.isfinite(r.effect) and np.isfinite(full.effect)
        with Patcher(model, tokenizer, min_gap=0) as pt, pytest.raises(InputError, match="not one token"):
            pt.effect(*UNEQUAL, heads=[(1, 0)], target_token="robinesque")


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_clearly(tokenizer, tmp_path, tiny_model_dir):
    model = _tiny("bert")
    with Patcher(model, tokenizer) as pt:
        with pytest.raises(InputError, match="layer 2 does not exist"):
            pt.effect(*UNEQUAL, heads=[(2, 0)])
        with pytest.raises(InputError, match="head 4 of layer 0 does not exist"):
            pt.effect(*UNEQUAL, heads=[(0, 4)])
        with pytest.raises(InputError, match="positions"):
            pt.effect(*UNEQUAL, heads=[(0, 0)], positions="everywhere")
    with pytest.raises(InputError, match="language-modelling"):
        Patcher(model, tokenizer, metric="logit")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "never"
    with pytest.raises(InputError, match="no pairs"):
        _cli(["--pairs", str(empty), "--out", str(out), "--model", str(tiny_model_dir)])
    assert not out.exists()
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"id": "a", "original": UNEQUAL[0], "counterfactual": UNEQUAL[1]}) + "\n")
    with pytest.raises(InputError, match="no trained"):
        _cli(["--pairs", str(one), "--out", str(out), "--model", str(tiny_model_dir), "--metric", "logit"])
    assert not out.exists()


def test_minilm_one_head_and_sweep(minilm):
    """The bundled model: the public API in a few lines, and every head of a sweep finite."""
    model, tokenizer = minilm
    with Patcher(model, tokenizer) as pt:
        r = pt.effect(*UNEQUAL, heads=[(5, 9)])
        setups = _pairs(pt)
        result = sweep(pt, setups, head_specs(pt, "z"))
    assert r.effect > 0.05 and not r.small_gap
    assert result.effects.shape == (3, 72) and np.isfinite(result.effects).all()
    assert VOCAB == tokenizer.vocab_size


# ----------------------------------------------------------------------------- attribution


def test_attribution_is_the_first_order_patch_effect(tokenizer):
    """In float64, patching z a small step eps toward the source changes the metric by
    eps * attribution * gap (finite difference of the exact patch)."""
    import copy

    from probe.patch_attribution import attribution
    from probe.patching import Source

    model = copy.deepcopy(_tiny("llama")).double()
    eps = 1e-2  # central difference: truncation O(eps^2); smaller steps drown in rounding
    with Patcher(model, tokenizer, min_gap=0) as pt:
        setup = pair_setup(pt, "eq", *EQUAL)
        approx = attribution(pt, [setup])[0]
        src = pt.source([setup.source_ids])[0]
        tgt = pt.source([setup.target_ids])[0]
        base = float(pt.readout.score(pt.forward([setup.target_ids]), src.readout, None)[0])
        gap = 1.0 - base
        for layer, head in [(0, 1), (1, 3)]:
            moved = []
            for step_size in (eps, -eps):  # central difference: error O(eps^2), not O(eps)
                step = Source(src.ids, tgt.z + step_size * (src.z - tgt.z), src.pattern, src.v,
                              src.resid, src.readout)
                ops = Ops()
                ops.add_patch("z", layer, head, [0], setup, step, 2)
                out = pt.forward([setup.target_ids], ops.finish(pt.device))
                moved.append(float(pt.readout.score(out, src.readout, None)[0]))
            slope = (moved[0] - moved[1]) / (2 * eps) / gap
            assert slope == pytest.approx(approx[layer, head], rel=1e-3, abs=1e-6)
    assert np.abs(approx).max() > 1e-3


def test_cli_screen_controls_and_study_join(tmp_path, tiny_model_dir):
    """--attribution patches only the top heads; --study joins a study's stats.csv and reports
    the Spearman correlation; controls give patch_vs_control.csv."""
    import csv

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"id": f"p{i}", "original": a, "counterfactual": b, "kind": "copula", "cluster": f"c{i}",
             "control": b.replace("not", "really").replace("cannot", "can really")}
            for i, (a, b) in enumerate([UNEQUAL, OTHER, ("The tea is hot.", "The tea is not hot."),
                                        ("Birds can fly.", "Birds cannot fly.")])]
    pairs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    study = tmp_path / "study"
    study.mkdir()
    with open(study / "stats.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "contrast", "kind", "layer", "head", "estimate", "q"])
        for layer in range(2):
            for head in range(4):
                w.writerow(["attention_js_divergence", "negation_vs_control", "copula", layer, head,
                            0.1 * (layer * 4 + head), 0.5])
    out = tmp_path / "out"
    assert _cli(["--pairs", str(pairs), "--out", str(out), "--model", str(tiny_model_dir),
                 "--attribution", "3", "--study", str(study), "--resamples", "50", "--top", "0"]) == 0
    patch = list(csv.DictReader(open(out / "patch.csv")))
    assert len(patch) == 3                                   # the three screened heads only
    screen = list(csv.DictReader(open(out / "patch_attribution.csv")))
    assert len(screen) == 8 and sum(r["exact"] != "" for r in screen) == 3
    joined = list(csv.DictReader(open(out / "patch_vs_study.csv")))
    assert len(joined) == 3 and {"correlational_estimate", "causal_estimate"} <= set(joined[0])
    corr = list(csv.DictReader(open(out / "patch_study_correlation.csv")))
    assert corr[0]["kind"] == "copula" and corr[0]["n_heads"] == "3"
    assert (out / "patch_vs_control.csv").exists()
    assert "Spearman" in (out / "summary.md").read_text()


# ----------------------------------------------------------------------------- notebook


def test_sweep_table_and_reprs(tokenizer):
    """rows()/to_pandas() hold every (pair, head) with raw / gap = effect; both results render."""
    pd = pytest.importorskip("pandas")
    with Patcher(_tiny("bert"), tokenizer, min_gap=0) as pt:
        setups = _pairs(pt)
        result = sweep(pt, setups, head_specs(pt, "z"))
        one = pt.effect(*UNEQUAL, heads=[(1, 0)])
    table = result.to_pandas()
    assert isinstance(table, pd.DataFrame) and len(table) == len(setups) * len(result.specs)
    row = table[(table["id"] == setups[0].id) & (table["layer"] == 1) & (table["head"] == 0)].iloc[0]
    assert row.effect == pytest.approx(row.raw / row.gap)
    assert row.effect == pytest.approx(result.effects[0, [s[1:] for s in result.specs].index((1, (0,)))])
    assert "patch sweep (embedding): 3 of 3 pairs used" in result._repr_html_()
    assert f"{one.effect:.3f}" in one._repr_html_() and "descriptive" in one._repr_html_()
