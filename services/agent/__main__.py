from services.agent.app import run

run()
