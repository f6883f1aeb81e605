from services.guardrails.app import run

run()
