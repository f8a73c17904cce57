"""The intervention table of one forward pass, and the block hooks that go with it.

:class:`Ops` holds, per layer, vectorised replacements: ``z[row, head, position] = value``,
pattern rows ``pattern[row, head, query, :] = row`` (z recomputed from the new pattern and the
values), values ``v[row, kv_head, position] = value`` (z recomputed), and block inputs
``resid[row, position] = value``. ``rows=None`` means every row of the batch. The backend calls
:meth:`Ops.apply` after each layer's attention.

Imports torch, :mod:`probe.attention` and :mod:`probe.errors`.

>>> import torch
>>> ops = Ops(); ops.add_broadcast(0, 1, None, None); ops = ops.finish("cpu")
>>> z = torch.ones(2, 3, 4, 5); _, out = ops.apply(0, torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 5), z)
>>> float(out[:, 1].abs().sum()), float(out[:, 0].sum())
(0.0, 40.0)
"""

from __future__ import annotations

import contextlib

import torch

from .attention import repeat_kv
from .errors import InputError


def block_modules(model, layers) -> list | None:
    """The transformer block of each attention layer: its name up to the last numeric part
    (``encoder.layer.3.attention.self`` -> ``encoder.layer.3``). None when layers share blocks
    (ALBERT) or a name has no index: block hooks would then fire for several layers."""
    blocks = []
    for layer in layers:
        parts = layer.name.split(".")
        numeric = [i for i, part in enumerate(parts) if part.isdigit()]
        if not numeric:
            return None
        blocks.append(model.get_submodule(".".join(parts[: numeric[-1] + 1])))
    if len({id(b) for b in blocks}) != len(blocks):
        return None
    return blocks


def _cat(entries, device):
    """Concatenate (rows, heads, positions, values) entries into one vectorised entry."""
    if not entries:
        return []
    groups = {}
    for rows, heads, pos, vals in entries:  # rows None (broadcast) and row-wise apart
        groups.setdefault(rows is None, []).append((rows, heads, pos, vals))
    out = []
    for broadcast, items in groups.items():
        if any(i[2] is None for i in items) or any(i[3] is None or i[3].dim() < 2 for i in items):
            out.extend(items)  # whole-head broadcasts stay one by one
            continue
        width = max(i[3].shape[-1] for i in items)
        vals = torch.cat([torch.nn.functional.pad(i[3], (0, width - i[3].shape[-1])) for i in items])
        lt = lambda xs: torch.as_tensor(torch.cat([torch.as_tensor(x).reshape(-1) for x in xs]),
                                        dtype=torch.long, device=device)
        rows = None if broadcast else lt([i[0] for i in items])
        out.append((rows, lt([i[1] for i in items]), lt([i[2] for i in items]), vals.to(device)))
    return out


def _assign(x, entry):
    rows, heads, pos, vals = entry
    if pos is None:  # a whole head, every row and position
        if vals is None:
            x[:, heads] = 0
        else:
            x[:, heads] = vals.to(x.dtype)
        return
    if vals is None:
        vals = torch.zeros((), dtype=x.dtype, device=x.device)
    else:
        vals = vals.to(x.dtype)
    if vals.dim() == 2 and vals.shape[-1] < x.shape[-1] and x.dim() == 4 and x.shape[-1] == x.shape[-2]:
        vals = torch.nn.functional.pad(vals, (0, x.shape[-1] - vals.shape[-1]))  # padded keys
    if rows is None:
        x[:, heads, pos] = vals
    else:
        x[rows, heads, pos] = vals


class Ops:
    """Replacements for one forward pass, per layer (see the module docstring)."""

    def __init__(self):
        self.z, self.pattern, self.value, self.resid = {}, {}, {}, {}

    def __bool__(self):
        return bool(self.z or self.pattern or self.value or self.resid)

    def add(self, kind: str, layer: int, rows, heads, pos, vals) -> None:
        getattr(self, kind).setdefault(layer, []).append((rows, heads, pos, vals))

    def add_broadcast(self, layer: int, head: int, pos, vals) -> None:
        """z of ``head`` on every row: at ``pos`` (None: all positions) set to ``vals`` (None: 0)."""
        if pos is not None:
            pos = torch.as_tensor(pos, dtype=torch.long)
            head = torch.full(pos.shape, head, dtype=torch.long)
        self.add("z", layer, None, head, pos, vals)

    def add_patch(self, component, layer, head, rows, setup, src, group: int, only=None) -> None:
        """Patch ``component`` of ``head`` from source ``src`` at ``setup``'s positions.

        ``rows``: batch rows (None: all); ``only``: index into the pair's query map (one position).
        """
        t, s = setup.query
        if only is not None:
            t, s = t[only:only + 1], s[only:only + 1]
        n = len(t)
        r = None if rows is None else torch.as_tensor(rows).repeat_interleave(n)
        hh = torch.full((n,), head, dtype=torch.long)
        tt, ss = torch.as_tensor(t), torch.as_tensor(s)
        m = 1 if rows is None else len(rows)
        if component == "z":
            self.add("z", layer, r, hh.repeat(m), tt.repeat(m), src.z[layer, head][ss].repeat(m, 1))
        elif component == "value":
            self.add("value", layer, r, hh.repeat(m), tt.repeat(m), src.v[layer, head][ss].repeat(m, 1))
        elif component == "pattern":
            kt, ks = (torch.as_tensor(a) for a in setup.keys)
            new = torch.zeros((n, len(setup.target_ids)), dtype=src.pattern.dtype, device=src.pattern.device)
            new[:, kt] = src.pattern[layer, head][ss][:, ks]
            self.add("pattern", layer, r, hh.repeat(m), tt.repeat(m), new.repeat(m, 1))
        elif component == "resid":
            self.add("resid", layer, r, None, tt.repeat(m), src.resid[layer][ss].repeat(m, 1))
        else:
            raise ValueError(component)

    def finish(self, device) -> Ops:
        """Vectorise every layer's entries (one index operation per kind and layer)."""
        for kind in ("z", "pattern", "value"):
            setattr(self, kind, {layer: _cat(e, device) for layer, e in getattr(self, kind).items()})
        resid = {}
        for layer, entries in self.resid.items():
            rows = [e[0] for e in entries]
            cat = lambda xs: torch.cat([torch.as_tensor(x).reshape(-1) for x in xs]).to(device)
            resid[layer] = (None if any(r is None for r in rows) else cat(rows),
                            cat([e[2] for e in entries]), torch.cat([e[3] for e in entries]).to(device))
        self.resid = resid
        return self

    def apply(self, layer, pattern, value, z):
        """The backend's callback: ``(pattern, z)`` with this layer's replacements, or None."""
        pat_ops, val_ops, z_ops = self.pattern.get(layer), self.value.get(layer), self.z.get(layer)
        if not (pat_ops or val_ops or z_ops):
            return None
        if pat_ops or val_ops:
            if pat_ops:
                pattern = pattern.clone()
                for entry in pat_ops:
                    _assign(pattern, entry)
            v = value
            if val_ops:
                v = value.clone()
                for entry in val_ops:
                    _assign(v, entry)
            z = torch.matmul(pattern, repeat_kv(v, pattern.shape[1]))  # as attend() computes it
        if z_ops:
            z = z.clone()
            for entry in z_ops:
                _assign(z, entry)
        return pattern, z


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _expand(x, n: int, repeat: int):
    if torch.is_tensor(x):
        return x.repeat_interleave(repeat, 0) if x.dim() >= 2 and x.shape[0] == n else x
    if isinstance(x, tuple):
        return tuple(_expand(i, n, repeat) for i in x)
    return x


def expand_hook(n: int, repeat: int):
    """A block pre-hook repeating every batch-first input of ``n`` rows ``repeat`` times.

    On the first expanded block it turns the batch of n rows into n * repeat (each row repeated
    in place); on later blocks the hidden states already have n * repeat rows and only the
    other batch-first inputs (masks, positions) are repeated.
    """
    def hook(module, args, kwargs):
        return (tuple(_expand(a, n, repeat) for a in args),
                {k: _expand(v, n, repeat) for k, v in kwargs.items()})
    return hook


def residual_hook(index: int, ops: Ops | None, record: dict | None):
    """A block pre-hook that records the block's input and/or replaces it at chosen rows/positions."""
    def hook(module, args, kwargs):
        hidden = _hidden(args, kwargs)
        if record is not None:
            record.setdefault("resid", {})[index] = hidden
        entry = None if ops is None else ops.resid.get(index)
        if entry is None:
            return None
        rows, pos, vals = entry
        hidden = hidden.clone()
        if rows is None:
            hidden[:, pos] = vals.to(hidden.dtype)
        else:
            hidden[rows, pos] = vals.to(hidden.dtype)
        return _with_hidden(args, kwargs, hidden)
    return hook


def _recording(intervene, record: dict):
    """``intervene`` (or nothing) that also keeps each layer's z, pattern and v in ``record``."""
    def recorded(layer, pattern, value, z):
        out = None if intervene is None else intervene(layer, pattern, value, z)
        p, zz = (pattern, z) if out is None else out
        record.setdefault("z", {})[layer], record.setdefault("pattern", {})[layer] = zz, p
        record.setdefault("v", {})[layer] = value
        return out
    return recorded


@contextlib.contextmanager
def installed(patcher, ops: Ops | None, *, expand=None, n_rows: int = 0, record=None):
    """Inside the block, ``patcher``'s model runs with ``ops`` in its attention backend and
    their block hooks: residual patches, ``expand=(layer, repeat)`` (``n_rows`` rows repeated
    from that block on, see :func:`expand_hook`) and ``record`` (a dict that receives each
    layer's z, pattern, v and block input). Everything is removed on leaving, also on error."""
    blocks = patcher.blocks
    if ops is not None and ops.resid and blocks is None:
        raise InputError(f"{type(patcher.model).__name__} shares its blocks between layers "
                         "(or they have no index): residual-stream patches are not available")
    intervene = None if ops is None else ops.apply
    handles = []
    try:
        if expand is not None and expand[1] > 1:
            handles += [block.register_forward_pre_hook(expand_hook(n_rows, expand[1]),
                                                        with_kwargs=True)
                        for block in blocks[expand[0]:]]
        for index, block in enumerate(blocks or ()):
            if record is not None or (ops is not None and index in ops.resid):
                handles.append(block.register_forward_pre_hook(
                    residual_hook(index, ops, record), with_kwargs=True))
        patcher.probe.intervention = intervene if record is None else _recording(intervene, record)
        yield
    finally:
        patcher.probe.intervention = None
        for handle in handles:
            handle.remove()
