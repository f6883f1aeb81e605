"""``agent_client``: the agent bridge's CPU per agent call (POST, one SSE event back), with
httpx on its own transport and on aiohttp's (what agent_bridge/agent_client.py uses), at 1, 8
and 40 calls in flight, against the pipeline benchmark's fake agent.

    python -m bench.agent_client
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
from httpx_aiohttp import AiohttpTransport

from agent_bridge.agent_client import AgentStream
from bench import pipeline_fakes
from bench.common import BenchResult, fmt
from bench.report import write_standalone
from shared.protocols import agent_request
from tests.harness import ROOT, free_port, wait_port

NAME = "agent_client"
CONCURRENCY = (1, 8, 40)
HISTORY = [{"role": "user", "content": "I would like a large pizza please"}] * 6


async def _calls(client: httpx.AsyncClient, in_flight: int, calls: int) -> float:
    """Client CPU (process time) per call, microseconds."""
    body = agent_request(HISTORY, {"guid": "bench"}, None)
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots, client.stream("POST", pipeline_fakes.AGENT_PATH, json=body,
                                        headers={"Accept": "text/event-stream"}) as response:
            async for _ in AgentStream(response).events():
                pass

    await asyncio.gather(*(one() for _ in range(50)))  # connections open, code warm
    started = time.process_time()
    await asyncio.gather(*(one() for _ in range(calls)))
    return (time.process_time() - started) / calls * 1e6


async def _measure(base_url: str, calls: int) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {"httpx": {}, "httpx+aiohttp": {}}
    for n in CONCURRENCY:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as plain:
            out["httpx"][n] = await _calls(plain, n, calls)
        async with httpx.AsyncClient(base_url=base_url, timeout=10,
                                     transport=AiohttpTransport()) as fast:
            out["httpx+aiohttp"][n] = await _calls(fast, n, calls)
    return out


def run(quick: bool) -> BenchResult:
    calls = 200 if quick else 1500
    port = free_port()
    fakes = subprocess.Popen([sys.executable, "-m", "bench.pipeline_fakes", "--port", str(port)],
                             cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        import uvloop

        figures = uvloop.run(_measure(f"http://127.0.0.1:{port}", calls))
    finally:
        fakes.terminate()
        fakes.wait(10)
    result = BenchResult(NAME)
    for transport, by_n in figures.items():
        for n, us in by_n.items():
            result.figure(f"{transport}_us_per_call_c{n}",
                          f"{transport}, {n} in flight", "µs CPU/call").samples.append(us)
    ratios = {n: figures["httpx"][n] / figures["httpx+aiohttp"][n] for n in CONCURRENCY}
    result.details = {"calls": calls, "ratios": {n: round(r, 2) for n, r in ratios.items()}}
    result.notes.append(
        "Client process CPU per agent call (POST with a 6-message history, one SSE event back "
        "from bench/pipeline_fakes.py on this box), uvloop, after 50 warm-up calls. httpx's "
        "own transport vs httpx on httpx-aiohttp's transport; ratio (httpx / aiohttp) at "
        + ", ".join(f"{n} in flight {fmt(r)}x" for n, r in ratios.items()) + ".")
    for line in result.notes:
        print("  " + line)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_client", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    result = run(False)
    if not args.no_write:
        md, _ = write_standalone(result, args.out)
        print(f"wrote {md}")


if __name__ == "__main__":
    main()
