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
