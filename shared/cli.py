"""``xrx``: one subcommand per long-running process, and ``xrx up`` for all of them."""

from __future__ import annotations

import argparse
import importlib
import sys

from shared import runtime

# name -> "module:function"; imported lazily so `xrx gateway` never loads torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "gateway": ("gateway.main:run", "the client-facing WebSocket gateway"),
    "agent-bridge": ("agent_bridge.main:run", "worker calling the reasoning agent"),
    "vad-worker": ("vad_worker.main:run", "Silero VAD worker: utterances and barge-in"),
    "stt-bridge": ("stt_bridge.main:run", "worker sending utterances to the STT service"),
    "tts-bridge": ("tts_bridge.main:run", "worker speaking replies through the TTS service"),
    "demo-agent": ("services.agent.app:run", "reference reasoning agent (pizza orders)"),
    "guardrails": ("services.guardrails.app:run", "guardrails proxy in front of the agent"),
    "stt-service": ("services.stt.server:run", "reference STT service (faster-whisper)"),
    "tts-service": ("services.tts.server:run", "reference TTS service (piper)"),
    "up": ("shared.launcher:run", "start everything locally, with a private Redis if needed"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xrx", description="xRx-compatible voice orchestrator")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_)
    args = parser.parse_args(argv)
    module, func = COMMANDS[args.command][0].split(":")
    entry = getattr(importlib.import_module(module), func)
    runtime.tune()
    entry()


if __name__ == "__main__":
    main(sys.argv[1:])
