"""Progress lines on stderr while the benchmark runs (it takes minutes), timed from its start.

stdout is kept for the final markdown table, so a caller can redirect the table alone.
"""

from __future__ import annotations

import logging
import sys
import time

_START = time.monotonic()
log = logging.getLogger("bench")


class _ElapsedFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        elapsed = time.monotonic() - _START
        minutes, seconds = divmod(elapsed, 60)
        line = f"[bench {int(minutes):2d}:{seconds:04.1f}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(verbose: bool = False) -> None:
    """Our lines only; the platform's own INFO logging (imported for table creation) stays
    quiet unless asked for."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ElapsedFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    # The readiness probes' retries (urllib3) are expected while services boot.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    else:
        logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
