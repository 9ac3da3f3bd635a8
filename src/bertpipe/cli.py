"""What every stage script shares: logging set-up and one-line errors for bad input."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input or a bad environment: the message says what is wrong and how to fix it."""


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
