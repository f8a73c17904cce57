"""The ``probe`` command line: parse arguments, call the library, report.

One job: the entry point (``probe`` and ``python -m probe``): build the parser from the
command modules, run the chosen command, and turn every :class:`~probe.errors.ProbeError`,
SIGINT or SIGTERM into one ``probe: error:`` line and an exit code. Each command group lives
in its own module, which adds its subparsers and implements its commands:

- :mod:`probe.capture_cli`: ``capture`` (print a summary, or stream to an HDF5 run file,
  resumable with ``--resume``, sharded with ``--shard``) and ``combine``;
- :mod:`probe.study_cli`: ``negation``, ``counterfactual``, ``analyze``, ``cues``;
- :mod:`probe.pattern_cli`: ``metrics``, ``view``, ``compare-models``;
- ``check-model`` (:mod:`probe.check`), ``patch`` (:mod:`probe.patch_cli`), ``verify``
  (:mod:`probe.verify`), ``export`` (:mod:`probe.export`).

Imports ``errors`` and those modules' ``add_*_parser`` functions (and, once a command runs,
matplotlib to pick its file-only backend and transformers' logging); the command modules
never import this one.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .errors import ProbeError, ProbeWarning

_default_showwarning = warnings.showwarning


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in the project's form: the usage, then one ``probe: error:``
    line naming the subcommand (argparse itself writes ``probe capture: error: ...``)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"probe: error: {command}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .capture_cli import add_capture_parser, add_combine_parser
    from .check import add_check_parser
    from .export import add_export_parser
    from .patch_cli import add_patch_parser
    from .pattern_cli import add_pattern_parsers
    from .study_cli import add_study_parsers
    from .verify import add_verify_parser

    parser = _Parser(prog="probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"probe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # in the order `probe --help` has always listed them
    for add in (add_capture_parser, add_study_parsers, add_pattern_parsers, add_check_parser,
                add_patch_parser, add_verify_parser, add_export_parser, add_combine_parser):
        add(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, ProbeWarning):
        print(f"probe: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


class _Stopped(BaseException):
    """SIGINT or SIGTERM outside a capture's write loop (nothing half-written to stop)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame) -> None:
    """While a capture writes, ask it to stop at the next batch boundary (the batch being
    written is committed, the file stays resumable); otherwise stop right away."""
    runner = sys.modules.get("probe.runner")  # not imported: no capture is running
    if runner is None or not runner.request_stop(signum):
        raise _Stopped(signum)


def _install_signal_handlers() -> dict:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, _on_signal)
    return previous


def main(argv=None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    previous = _install_signal_handlers()
    try:
        import matplotlib
        from transformers.utils import logging as hf_logging

        matplotlib.use("Agg")  # the CLI only writes figures to files; the library never picks a backend
        hf_logging.disable_progress_bar()
        warnings.showwarning = _show_warning
        return args.func(args)
    except ProbeError as err:  # one line, whatever text a library's error brought in
        print(f"probe: error: {' '.join(str(err).split())}", file=sys.stderr)
        signum = getattr(err, "signum", None)  # runner.Interrupted: 130 for SIGINT, 143 for SIGTERM
        return 128 + int(signum) if signum else 2
    except (_Stopped, KeyboardInterrupt) as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print("probe: error: interrupted", file=sys.stderr)
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
