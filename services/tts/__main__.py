from services.tts.server import run

run()
