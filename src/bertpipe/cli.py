"""The command line every stage script shares: its parser, logging, and `UserError` as one line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from bertpipe.errors import UserError


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """A stage's argument parser: `--help` shows its docstring (Reads/Writes/Params); --params."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    return parser


def run(main: Callable[[], None]) -> None:
    """Run a stage's `main`; a `UserError` becomes `error: <message>` and exit status 1."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def add_workers_arg(parser: argparse.ArgumentParser, what: str) -> None:
    """--workers for a data stage: how many processes share `what` (0 or 1: this one alone)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("BERTPIPE_WORKERS") or os.cpu_count() or 1),
        help=f"processes that {what}; 0 or 1: this process alone "
        "(default: $BERTPIPE_WORKERS, else the CPU count: %(default)s)",
    )


def processes(parser: argparse.ArgumentParser, workers: int) -> int:
    """The number of processes `--workers` asks for (at least 1)."""
    if workers < 0:
        parser.error(f"--workers (or $BERTPIPE_WORKERS): expected 0 or more, got {workers}")
    return max(workers, 1)
