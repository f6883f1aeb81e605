"""Process-wide tuning of the Python runtime, applied by ``xrx`` before a service starts.

Both measured with py-spy (``--native``) on the pipeline load benchmark at N=300, where every
process handles thousands of small messages a second:

- On Python 3.11, every ``asyncio.get_running_loop()`` done in C makes a ``getpid()`` system
  call (a fork check CPython 3.12 dropped, python/cpython#100363). ``asyncio.Queue``, ``Event``
  and ``Lock`` ask for the running loop on every wait, so the gateway, which waits on a queue
  for each client frame, spent 7 % of its py-spy samples in ``getpid``. That overstates
  its CPU: timed directly, one ``getpid()`` costs 0.14 us on the same machine, and py-spy's
  ``--native`` samples land on system calls far more often than their share of CPU, so the
  saving is a fraction of a percent of a core. Once such an object is bound to a loop, it
  is given that loop without asking again; the check this skips only catches an object used
  from two event loops, which none of these processes does.
- The cyclic garbage collector ran a young collection every 700 allocations (4 % of the
  gateway's samples): the objects loaded at start-up are frozen out of its scans and young
  collections run 10x less often. Nearly everything these services allocate per message is
  freed by reference counting, not by the collector.
"""

from __future__ import annotations

import gc
import sys
from asyncio import mixins
from typing import Any

YOUNG_COLLECTION_EVERY = 7_000  # allocations; CPython's default is 700

_unbound_get_loop = mixins._LoopBoundMixin._get_loop  # type: ignore[attr-defined]


def _get_bound_loop(self: Any) -> Any:
    loop = self._loop
    if loop is None:
        return _unbound_get_loop(self)  # binds it, with the stock checks
    return loop


def tune() -> None:
    """Call once, after the service's modules are imported and before its loop starts."""
    if sys.version_info < (3, 12):
        mixins._LoopBoundMixin._get_loop = _get_bound_loop  # type: ignore[attr-defined]
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, older, oldest)
