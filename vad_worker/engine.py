"""The VAD stage without its transport: frames in, events out, for many sessions at once."""

from __future__ import annotations

from vad_worker.batch_vad import BatchVad
from vad_worker.events import VadEvent
from vad_worker.rechunk import WINDOW_SAMPLES, pcm_to_float, rechunk
from vad_worker.segmenter import Segmenter, VadParams
from vad_worker.state import SessionVadState


class VadEngine:
    """Re-chunks, batches the model across sessions and segments, per call to :meth:`process`.

    Synchronous and CPU-bound (the model runs inside): an asyncio caller should run it in a
    worker thread. One engine may serve any number of sessions; it keeps no per-session data
    itself, everything lives in the :class:`SessionVadState` objects passed in. A given
    session must not be in two concurrent calls. If the model raises, the sessions in that
    call are left part-way (audio consumed, model state advanced) and should be reset.
    """

    def __init__(self, params: VadParams, model: BatchVad) -> None:
        self.params = params
        self.model = model
        self.segmenter = Segmenter(params)

    def process(self, frames: list[tuple[SessionVadState, bytes]]) -> list[VadEvent]:
        """Consume new audio (s16le 16 kHz mono) for any number of sessions.

        A session may appear several times; its frames are taken in list order. Batch ``i``
        holds window ``i`` of every session that has one, so each model call is as wide as
        possible while each session's windows still go through the model in order.
        Returns events grouped by session (in order of first appearance), each session's
        events in stream order.
        """
        pending: dict[int, tuple[SessionVadState, list[bytes]]] = {}
        for st, data in frames:
            entry = pending.get(id(st))
            if entry is None:
                entry = pending[id(st)] = (st, [])
            windows, st.remainder = rechunk(st.remainder, data)
            entry[1].extend(windows)

        sessions = list(pending.values())
        probs: list[list[float]] = [[] for _ in sessions]
        depth = max((len(w) for _, w in sessions), default=0)
        for i in range(depth):
            ready = [k for k, (_, w) in enumerate(sessions) if len(w) > i]
            # One conversion for the whole batch: per-window numpy calls cost as much as
            # the model at a few hundred sessions.
            batch = pcm_to_float(b"".join([sessions[k][1][i] for k in ready])).reshape(
                len(ready), WINDOW_SAMPLES)
            out = self.model.infer_batch([sessions[k][0] for k in ready], batch)
            for k, p in zip(ready, out.tolist(), strict=True):
                probs[k].append(p)

        events: list[VadEvent] = []
        for (st, windows), session_probs in zip(sessions, probs, strict=True):
            for window, p in zip(windows, session_probs, strict=True):
                events.extend(self.segmenter.feed(st, window, p))
        return events

    def flush(self, state: SessionVadState) -> list[VadEvent]:
        """Close the session's open utterance, if any (see :meth:`Segmenter.flush`)."""
        return self.segmenter.flush(state)
