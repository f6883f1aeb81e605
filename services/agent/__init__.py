"""Demo reasoning agent speaking the xRx agent protocol: a scripted pizza-ordering assistant,
optionally backed by an OpenAI-compatible LLM."""

from services.agent.app import create_app, run

__all__ = ["create_app", "run"]
