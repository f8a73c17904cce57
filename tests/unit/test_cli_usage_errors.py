"""Usage errors (argparse's) end in one ``probe: error:`` line naming the subcommand, exit 2."""

from __future__ import annotations

import pytest

from probe.cli import main


@pytest.mark.parametrize("argv, message", [
    (["capture", "in.txt", "--dtype", "float8"], "probe: error: capture: argument --dtype: invalid choice: 'float8'"),
    (["negation"], "probe: error: negation: the following arguments are required: --out"),
    (["patch", "--pairs", "p.jsonl", "--out", "o", "--component", "x"], "probe: error: patch: argument --component"),
    (["no-such-command"], "probe: error: argument command: invalid choice: 'no-such-command'"),
])
def test_usage_errors_end_in_one_probe_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and lines[0].startswith("usage: probe")
    assert lines[-1].startswith(message) and sum(line.startswith("probe: error:") for line in lines) == 1


def test_a_probe_error_is_one_line_whatever_text_it_carries(monkeypatch, capsys):
    """A library's message (HDF5's, transformers') wrapped in a ProbeError may span lines; the
    command still prints one ``probe: error:`` line."""
    from probe import InputError, verify

    def fails(args):
        raise InputError("run.h5 is broken (HDF5 says:\nfile read failed,\n  errno = 21)")

    monkeypatch.setattr(verify, "cmd_verify", fails)
    assert main(["verify", "run.h5"]) == 2
    assert capsys.readouterr().err == "probe: error: run.h5 is broken (HDF5 says: file read failed, errno = 21)\n"
