"""Logging for workflow jobs: everything (logging, tqdm, warnings) goes to the rule's log file."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Callable

from asd.errors import AsdError


def configure(stream) -> None:
    logging.basicConfig(stream=stream, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_logged(log_path: str | None, function: Callable[[], None]) -> None:
    """Run ``function`` with stderr redirected to ``log_path``; a user error ends the job with its message only."""
    if log_path is None:
        configure(sys.stderr)
        function()
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as log_file, contextlib.redirect_stderr(log_file):
        configure(log_file)
        try:
            function()
        except AsdError as err:
            logging.getLogger("asd").error("%s", err)
            # one write: parallel jobs share the terminal, and a pipe keeps a single small write whole
            sys.__stderr__.write(f"ERROR: {err}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None
        except Exception:
            logging.getLogger("asd").exception("job failed")
            raise
