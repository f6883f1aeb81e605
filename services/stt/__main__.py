from services.stt.server import run

run()
