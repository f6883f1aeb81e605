"""Prometheus metrics of the gateway."""

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("xrx_gateway_connections", "Open client WebSocket connections")
FRAMES_IN = Counter("xrx_gateway_frames_in_total", "Client frames received", ["kind"])
AUDIO_FRAMES_IN = FRAMES_IN.labels("audio")  # counted by gateway/audio_ingest.py, per write
BAD_FRAMES = Counter("xrx_gateway_bad_frames_total", "Client frames refused", ["reason"])
AUTH_FAILURES = Counter("xrx_gateway_auth_failures_total", "Refused connections", ["status"])
REPLIES_OUT = Counter("xrx_gateway_replies_out_total", "Messages sent to clients", ["type"])
FENCED_DROPPED = Counter("xrx_gateway_fenced_dropped_total",
                         "Replies of cancelled turns dropped before the client")
