"""``floors``: what a live voice session costs on this machine before any of the project's own
work, the floor under the pipeline benchmark's CPU per session.

- WebSocket receive: N clients send 30 ms PCM frames in real time to a uvicorn + Starlette
  endpoint that only receives them (and sends ~100 ms of audio back per second, as a talking
  agent would); the server's CPU per session. Twice: through ASGI's ``receive()``, and
  through the gateway's audio short path (gateway/ws_protocol.py), which is what the gateway
  pays now, and more.
- Silero: the model alone (vad_worker.batch_vad, one torch thread) on batches of N windows,
  31.25 windows per second per real-time stream; CPU per session. The vad-worker pays this
  and more.
- A Redis round trip: the CPU one GET costs the client, through the project's redis-py
  client (shared.redis_io.connect) and over plain asyncio streams (the same bytes, no
  library), both on uvloop against a private redis-server. Every stage pays the first one
  many times per turn.

    python -m bench.floors --sessions 100,300 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import BenchResult, fmt
from bench.report import write_standalone
from tests.harness import ROOT, free_port, wait_port

NAME = "floors"
FRAME_S = 0.03
FRAME = b"\x01\x00" * 480  # 30 ms of 16 kHz s16le
REPLY = b"\x00" * 3200  # 100 ms of audio back per second of frames
WINDOWS_PER_S = 16000 / 512


# --- the WebSocket receive floor -------------------------------------------------------------

SHORT_PATH = "audio-short-path"  # --ws value: the gateway's protocol class and a sink


def serve(port: int, ws_impl: str = "auto") -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    from gateway.ws_protocol import AUDIO_SINK, AudioFastPath

    tasks: set[asyncio.Task[None]] = set()

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        frames = 0

        def sink(_pcm: bytes) -> bool:
            nonlocal frames
            frames += 1
            if frames % 33 == 0:
                task = asyncio.get_running_loop().create_task(ws.send_bytes(REPLY))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            return True

        if ws_impl == SHORT_PATH:
            ws.scope["extensions"][AUDIO_SINK](sink)
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            frames += 1
            if frames % 33 == 0:
                await ws.send_bytes(REPLY)

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    # As the gateway runs it (gateway/main.py).
    uvicorn.run(app, host="127.0.0.1", port=port, ws_per_message_deflate=False,
                log_level="warning", ws=AudioFastPath if ws_impl == SHORT_PATH else ws_impl)


async def _client(port: int, seconds: float, start: float) -> None:
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", compression=None,
                                  max_size=None) as ws:
        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        i = 0
        while time.monotonic() < start + seconds:
            await ws.send(FRAME)
            i += 1
            await asyncio.sleep(max(0.0, start + i * FRAME_S - time.monotonic()))
        reader.cancel()


def ws_floor(n: int, seconds: float, ws_impl: str = "auto") -> float:
    """Server CPU, % of one core per session, over ``seconds`` of N real-time clients."""
    import subprocess

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.floors", "--serve", str(port),
                               "--ws", ws_impl],
                              cwd=ROOT)
    try:
        wait_port(port)
        proc = psutil.Process(server.pid)

        async def drive() -> float:
            start = time.monotonic() + 1.0
            clients = [asyncio.create_task(_client(port, seconds + 2, start))
                       for _ in range(n)]
            await asyncio.sleep(max(0.0, start + 1.0 - time.monotonic()))  # all connected
            c0, t0 = proc.cpu_times(), time.monotonic()
            await asyncio.sleep(seconds)
            c1, t1 = proc.cpu_times(), time.monotonic()
            await asyncio.gather(*clients)
            busy = (c1.user + c1.system) - (c0.user + c0.system)
            return busy / (t1 - t0) * 100 / n

        return asyncio.run(drive())
    finally:
        server.terminate()
        server.wait(10)


# --- the Silero floor ------------------------------------------------------------------------

def silero_floor(n: int, calls: int = 200) -> float:
    """Model-only CPU, % of one core per real-time session, at batches of ``n`` windows."""
    from vad_worker.batch_vad import BatchVad
    from vad_worker.state import SessionVadState

    model = BatchVad(num_threads=1)
    rng = np.random.default_rng(0)
    states = [SessionVadState(session_id=str(i)) for i in range(n)]
    windows = (rng.standard_normal((n, 512)) * 0.05).astype(np.float32)
    for _ in range(10):
        model.infer_batch(states, windows)
    c0 = time.process_time()
    for _ in range(calls):
        model.infer_batch(states, windows)
    per_window_s = (time.process_time() - c0) / calls / n
    return per_window_s * WINDOWS_PER_S * 100


# --- the Redis round trip -------------------------------------------------------------------

def redis_round_trip(calls: int, rounds: int = 5) -> dict[str, float]:
    """User and system CPU (us) of one round trip: a GET and a three-command pipeline (an
    entry added, one acknowledged, a hash field read: the shape of a stage's writes), through
    the project's client (shared/redis_hot_path.py), through redis-py's own (its blocking
    pool and connection classes, same settings), and a GET over a bare asyncio socket.
    Clients alternate over ``rounds`` rounds; medians are reported (the machine is shared)."""
    import resource
    import statistics

    import uvloop
    from redis.asyncio import BlockingConnectionPool, Redis

    from shared.config import Settings
    from shared.redis_io import connect
    from tests.harness import RedisServer

    def cpu() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime

    def per_call(before: tuple[float, float]) -> tuple[float, float]:
        after = cpu()
        return ((after[0] - before[0]) / calls * 1e6, (after[1] - before[1]) / calls * 1e6)

    fields = {b"kind": b"speak", b"session_id": b"bench-session", b"turn": b"7",
              b"text": b"a sentence for the speech service to say"}

    async def gets(r: Redis) -> tuple[float, float]:
        before = cpu()
        for _ in range(calls):
            await r.get("x")
        return per_call(before)

    async def pipelines(r: Redis) -> tuple[float, float]:
        before = cpu()
        for _ in range(calls):
            async with r.pipeline(transaction=False) as p:
                p.xadd("s", fields, maxlen=1000, approximate=True)  # type: ignore[arg-type]
                p.xack("s", "g", "1-1")
                p.hget("h", "f")
                await p.execute()
        return per_call(before)

    server = RedisServer()
    server.start()
    try:
        async def measure() -> dict[str, float]:
            settings = Settings(REDIS_URL=server.url)
            project = connect(settings, name="bench")
            # redis-py's own: the same settings, its own pool and connection classes.
            plain_pool = BlockingConnectionPool.from_url(
                server.url, **{k: v for k, v in project.connection_pool.connection_kwargs.items()
                               if k not in ("host", "port", "db", "connection_class")})
            plain = Redis.from_pool(plain_pool)
            samples: dict[str, list[tuple[float, float]]] = {}
            for _ in range(rounds):
                for name, client in (("project", project), ("redis_py", plain)):
                    await gets(client)  # warm
                    samples.setdefault(f"{name}_get", []).append(await gets(client))
                    samples.setdefault(f"{name}_pipeline", []).append(await pipelines(client))
            await project.aclose()
            await plain.aclose()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            command = b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n"
            for _ in range(rounds):
                before = cpu()
                for _ in range(calls):
                    writer.write(command)
                    await reader.readline()  # "$-1": the key does not exist
                samples.setdefault("raw_get", []).append(per_call(before))
            writer.close()
            out: dict[str, float] = {}
            for key, values in samples.items():
                out[f"{key}_user_us"] = statistics.median(v[0] for v in values)
                out[f"{key}_sys_us"] = statistics.median(v[1] for v in values)
            return out

        return uvloop.run(measure())
    finally:
        server.stop()


def run(quick: bool, sessions: list[int] | None = None, seconds: float | None = None
        ) -> BenchResult:
    sessions = sessions or ([20] if quick else [100, 300])
    seconds = seconds or (3.0 if quick else 10.0)
    result = BenchResult(NAME)
    rows: list[dict[str, Any]] = []
    for n in sessions:
        ws = ws_floor(n, seconds)
        short = ws_floor(n, seconds, SHORT_PATH)
        model = silero_floor(n, calls=20 if quick else 200)
        rows.append({"n": n, "ws_pct_per_session": round(ws, 3),
                     "ws_short_path_pct_per_session": round(short, 3),
                     "silero_pct_per_session": round(model, 3)})
        result.figure(f"ws_receive_pct_per_session_n{n}",
                      f"WebSocket receive floor, {n} sessions", "% core/session").samples.append(ws)
        result.figure(f"ws_short_path_pct_per_session_n{n}",
                      f"WebSocket receive, gateway's audio short path, {n} sessions",
                      "% core/session").samples.append(short)
        result.figure(f"silero_pct_per_session_n{n}",
                      f"Silero model floor, batches of {n}", "% core/session").samples.append(model)
        print(f"  N={n}: websocket receive {fmt(ws)} % of a core per session "
              f"({fmt(short)} % through the audio short path), silero {fmt(model)} %",
              flush=True)
    trip = redis_round_trip(500 if quick else 3000)
    labels = {"project_get": "Redis GET round trip, the project's client",
              "redis_py_get": "Redis GET round trip, redis-py's own client",
              "raw_get": "Redis GET round trip, plain asyncio",
              "project_pipeline": "Redis 3-command pipeline, the project's client",
              "redis_py_pipeline": "Redis 3-command pipeline, redis-py's own client"}
    for key, label in labels.items():
        for cpu_kind in ("user", "sys"):
            name = f"{key}_{cpu_kind}_us"
            result.figure(name, f"{label}, {cpu_kind} CPU", "us").samples.append(trip[name])
        print(f"  {label}: {fmt(trip[f'{key}_user_us'])} us user + "
              f"{fmt(trip[f'{key}_sys_us'])} us system", flush=True)
    result.details = {"seconds": seconds, "rows": rows, "cpus": psutil.cpu_count(),
                      "redis_round_trip_us": {k: round(v, 1) for k, v in trip.items()}}
    result.notes.append(
        "Floors under bench.pipeline_load's CPU per session on this machine: a uvicorn + "
        "Starlette endpoint that only receives 30 ms frames (server process CPU; through "
        "ASGI receive(), and through the gateway's audio short path), and the "
        "Silero network alone on batches of N windows (one torch thread, process CPU time). "
        "Their sum per session times N is what N sessions cost before any Redis, routing, "
        "segmentation, STT, agent or TTS work.")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ws", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--sessions", default="100,300")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.ws)
        return
    result = run(False, [int(x) for x in args.sessions.split(",")], args.seconds)
    if not args.no_write:
        md, _ = write_standalone(result, args.out)
        print(f"wrote {md}")


if __name__ == "__main__":
    main()
