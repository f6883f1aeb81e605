"""Silero VAD inference for many sessions in one model call.

The package's own wrapper keeps one hidden state inside the model object, so it can serve
only one stream (or one fixed batch) at a time. Here each session keeps its own state and
context in :class:`SessionVadState`, and one call to the inner network serves whichever
sessions have a window ready: batching is what makes Silero affordable per stream (see
shared/docs/vad-benchmark.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import structlog
import torch
from torch import Tensor

from vad_worker import silero_net
from vad_worker.rechunk import SAMPLE_RATE, WINDOW_SAMPLES
from vad_worker.state import CONTEXT_SAMPLES, SessionVadState

log = structlog.get_logger(__name__)

# The profiling JIT executor re-specialises on the first few calls of each new input shape;
# a couple of distinct batch sizes at load time moves that cost (tens of ms) out of the
# first live frames.
_WARMUP_BATCHES = (1, 1, 1, 2, 2, 2, 16, 16, 16)


class BatchVad:
    """The Silero model's inner network, called directly with a batch of independent sessions.

    By default the network runs as plain matrix products (:mod:`vad_worker.silero_net`),
    checked against the package's TorchScript graph at load; ``graph=True``, or a package
    whose network differs, runs the graph itself.

    ``num_threads`` is torch's intra-op thread count for the whole process (torch has no
    per-model setting); one thread per worker process scales best because batching already
    amortises the per-call overhead.
    """

    def __init__(self, num_threads: int = 1, warmup: bool = True, graph: bool = False) -> None:
        import silero_vad

        with warnings.catch_warnings():
            # The package's loader uses APIs torch and importlib now flag as deprecated;
            # nothing for a caller to act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            model = silero_vad.load_silero_vad(onnx=False)
        # Importing silero_vad sets torch to one thread; the caller's choice must win.
        torch.set_num_threads(num_threads)
        # The inner 16 kHz network: forward(x [B, 64+512], state [2, B, 128]) -> (prob, state).
        # The outer wrapper only adds the context bookkeeping that SessionVadState now owns.
        inner = model._model
        if inner.context_size_samples != CONTEXT_SAMPLES:
            raise RuntimeError(
                f"silero model context is {inner.context_size_samples} samples, "
                f"expected {CONTEXT_SAMPLES}"
            )
        self._net: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] = inner
        self.kind = "graph"
        if not graph:
            try:
                self._net = silero_net.load(inner, CONTEXT_SAMPLES + WINDOW_SAMPLES)
                self.kind = "products"
            except silero_net.NetworkChanged as err:
                log.warning("silero network not recognised; running its graph (slower)",
                            reason=str(err))
        self.sample_rate = SAMPLE_RATE
        if warmup:
            self._warm_up()

    def _warm_up(self) -> None:
        for batch in _WARMUP_BATCHES:
            x = torch.zeros(batch, CONTEXT_SAMPLES + WINDOW_SAMPLES)
            state = torch.zeros(2, batch, 128)
            with torch.inference_mode():
                self._net(x, state)

    def infer(self, items: list[tuple[SessionVadState, np.ndarray]]) -> list[float]:
        """Speech probability of one 512-sample float32 window per item, in item order.

        Each item's session must appear at most once (its state advances by one window).
        Updates every session's RNN state and context in place, exactly as the package
        wrapper does between calls: the context is the last 64 samples of the window just
        seen. Synchronous and CPU-bound: call it from a thread, not the event loop.
        """
        if not items:
            return []
        for _, window in items:
            if window.shape != (WINDOW_SAMPLES,):
                raise ValueError(f"window must have {WINDOW_SAMPLES} samples, got {window.shape}")
        windows = np.stack([w for _, w in items]).astype(np.float32, copy=False)
        return [float(p) for p in self.infer_batch([s for s, _ in items], windows)]

    def infer_batch(self, states: list[SessionVadState], windows: np.ndarray) -> np.ndarray:
        """:meth:`infer` for ``windows`` already stacked, shape ``[len(states), 512]``: the
        form the engine uses. A session's new state and context are copied out (a view would
        keep the whole batch's arrays alive as long as the session stays quiet)."""
        n = len(states)
        x = np.empty((n, CONTEXT_SAMPLES + WINDOW_SAMPLES), dtype=np.float32)
        x[:, :CONTEXT_SAMPLES] = np.stack([s.context for s in states])
        x[:, CONTEXT_SAMPLES:] = windows
        state = np.concatenate([s.rnn_state for s in states], axis=1)
        with torch.inference_mode():
            out, new_state = self._net(torch.from_numpy(x), torch.from_numpy(state))
        new_np = new_state.numpy()
        for i, sess in enumerate(states):
            sess.rnn_state = new_np[:, i : i + 1, :].copy()
            sess.context = x[i, -CONTEXT_SAMPLES:].copy()
        return out.numpy()[:, 0]
