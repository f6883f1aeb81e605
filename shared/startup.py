"""What every long-lived process does before it serves: its settings read and validated
(a clear message and exit on a bad one), its logs set up (JSON in production, its name on
every line), its CPU priority (``CPU_NICE``) taken."""

from __future__ import annotations

from shared.config import Settings, load_settings
from shared.logs import configure_logging
from shared.priority import set_niceness


def start(process: str) -> Settings:
    settings = load_settings()
    configure_logging(settings, process)
    set_niceness(settings.CPU_NICE)
    return settings
