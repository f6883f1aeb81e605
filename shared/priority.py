"""The process's CPU scheduling priority (``CPU_NICE``), taken once at start.

When the stages share a machine and its cores are full, the scheduler splits them evenly
between busy processes. The vad-worker is the one whose delay every session pays at once: its
batches carry all their audio, and every end of speech waits for one. Kubernetes gives it a
larger share through its CPU request (``deploy/k8s``), Compose through ``cpu_shares``;
processes started side by side on one host without containers (the load benchmark) get it
from their niceness.
"""

from __future__ import annotations

import os

import structlog

log = structlog.get_logger(__name__)


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: where niceness is per process, the process itself
        return [0]


def set_niceness(nice: int | None) -> None:
    """Give every thread of this process the niceness ``nice`` (None: leave it). Linux keeps
    one per thread, and a thread starts with its starter's, so threads already running are
    set too. A niceness below the current one needs root or CAP_SYS_NICE; without them the
    process says so and runs on as it is: a scheduling preference is no reason to refuse
    service."""
    if nice is None:
        return
    try:
        for tid in _thread_ids():
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:
                pass  # the thread ended meanwhile
    except PermissionError:
        log.warning("CPU_NICE not applied: a lower niceness needs root or CAP_SYS_NICE",
                    cpu_nice=nice, niceness=os.getpriority(os.PRIO_PROCESS, 0))
        return
    log.info("cpu niceness set", cpu_nice=nice)
