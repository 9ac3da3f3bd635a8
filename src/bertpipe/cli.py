"""What every stage script shares: logging set-up and one-line errors for bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input or a bad environment: the message says what is wrong and how to fix it."""


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
