"""Guardrails proxy in front of the xRx agent: a deny-list check on the user's latest message,
everything else streamed through unchanged."""

from services.guardrails.app import create_app, run

__all__ = ["create_app", "run"]
