"""How long each part of a command takes, said at ``-v`` (the ``ppl_vae`` logger's debug level).

Layer 3 — standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

__all__ = ["timed"]

log = logging.getLogger("ppl_vae")


@contextlib.contextmanager
def timed(part: str) -> Iterator[None]:
    """Log ``part: N.N s`` at debug level once the block has run (not when it raised).

    >>> with timed("nothing"):
    ...     pass
    """
    start = time.perf_counter()
    yield
    log.debug("%s: %.1f s", part, time.perf_counter() - start)
