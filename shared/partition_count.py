"""Every process of a deployment must hash sessions over the same number of partitions: a
gateway and a worker that disagree send a session's entries to a stream nobody reads, and
its turns are lost without an error. The first process to reach Redis records its
``PARTITIONS``; one started later with another value refuses to start, saying which."""

from __future__ import annotations

import structlog
from redis import Redis as SyncRedis
from redis import exceptions as rexc

from shared import keys
from shared.config import Settings, config_error
from shared.redis_io import connect_sync

log = structlog.get_logger(__name__)


def mismatch(client: SyncRedis, partitions: int) -> int | None:
    """Record ``partitions`` as the deployment's if none is; return the recorded count when
    it differs (None when they agree)."""
    client.set(keys.partition_count(), partitions, nx=True)
    raw = client.get(keys.partition_count())
    recorded = int(raw) if raw else partitions
    return None if recorded == partitions else recorded


def check(settings: Settings, process: str) -> None:
    """Refuse to start (exit 2, one line) when this process's ``PARTITIONS`` is not the
    deployment's. With Redis out of reach the check is skipped: the process starts and
    waits for Redis as it always does."""
    client = connect_sync(settings, name=f"{process}-start")
    try:
        recorded = mismatch(client, settings.PARTITIONS)
    except rexc.RedisError as err:
        log.warning("PARTITIONS not checked: Redis out of reach or refused", error=str(err))
        return
    finally:
        client.close()
    if recorded is not None:
        raise config_error(
            f"PARTITIONS={settings.PARTITIONS}, but the processes of this deployment use "
            f"{recorded} (recorded in Redis as {keys.partition_count()}); every process must "
            "use the same. To change it, stop every process and delete that key.")
