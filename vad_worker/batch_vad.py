"""Silero VAD inference for many sessions in one model call.

The package's own wrapper keeps one hidden state inside the model object, so it can serve
only one stream (or one fixed batch) at a time. Here each session keeps its own state and
context in :class:`SessionVadState`, and one call to the inner network serves whichever
sessions have a window ready: batching is what makes Silero affordable per stream (see
shared/docs/vad-benchmark.md).
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable

import numpy as np
import structlog
import torch
from torch import Tensor

from vad_worker import silero_net
from vad_worker.rechunk import SAMPLE_RATE, WINDOW_SAMPLES
from vad_worker.state import CONTEXT_SAMPLES, RNN_SHAPE, SessionVadState

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
        self.num_threads = num_threads
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
        self._bank = StateBank()
        if warmup:
            self._warm_up()

    def bind_thread(self) -> None:
        """Run in each thread that will call the model: OpenMP's thread count is per thread,
        and a thread that never set it gives an OpenMP team to whatever op asks (its idle
        member then spins: 35 % of a core at one session, until this was called)."""
        torch.set_num_threads(self.num_threads)

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
        form the engine uses."""
        n = len(states)
        rows = self._bank.rows(states)
        x = np.empty((n, CONTEXT_SAMPLES + WINDOW_SAMPLES), dtype=np.float32)
        x[:, :CONTEXT_SAMPLES] = self._bank.context[rows]
        x[:, CONTEXT_SAMPLES:] = windows
        state = np.ascontiguousarray(self._bank.rnn[rows].transpose(1, 0, 2))
        with torch.inference_mode():
            out, new_state = self._net(torch.from_numpy(x), torch.from_numpy(state))
        self._bank.rnn[rows] = new_state.numpy().transpose(1, 0, 2)
        self._bank.context[rows] = x[:, -CONTEXT_SAMPLES:]
        return out.numpy()[:, 0]


class StateBank:
    """Every session's model memory as one row of two arrays, so a batch gathers and scatters
    it with one indexing operation each instead of copies per session (those cost ~1.4 us per
    session and window: more than a percent of a core at 300 sessions).

    A session's ``rnn_state`` and ``context`` become views of its row: the state object always
    holds its current memory (a checkpoint reads it between batches), and the row is freed
    when the state object goes. A state whose arrays were replaced since (restored from a
    checkpoint, reset by a test) is taken in again, values and all, on its next batch.
    """

    def __init__(self, rows: int = 64) -> None:
        self.rnn = np.zeros((rows, RNN_SHAPE[0], RNN_SHAPE[2]), dtype=np.float32)
        self.context = np.zeros((rows, CONTEXT_SAMPLES), dtype=np.float32)
        self._free = list(range(rows - 1, -1, -1))
        # Keyed by id(): a finalizer drops a state's entry as the state dies, before its id
        # can be reused (a WeakKeyDictionary lookup costs ~0.5 us a session and window).
        self._row: dict[int, int] = {}
        self._states: weakref.WeakValueDictionary[int, SessionVadState] = (
            weakref.WeakValueDictionary())
        # Rows are freed by finalizers, which run on whichever thread drops the last reference.
        self._lock = threading.RLock()  # a finalizer may run inside _grow, on this thread

    def rows(self, states: list[SessionVadState]) -> np.ndarray:
        """Each state's row, taking in the states that are new or have replaced arrays."""
        out = np.empty(len(states), dtype=np.intp)
        row_of = self._row
        for k, st in enumerate(states):
            row = row_of.get(id(st))
            if (row is None or st.rnn_state.base is not self.rnn
                    or st.context.base is not self.context):
                row = self._take_in(st, row)
            out[k] = row
        return out

    def __len__(self) -> int:
        """Rows in use."""
        return len(self._row)

    def _take_in(self, st: SessionVadState, row: int | None) -> int:
        rnn = np.asarray(st.rnn_state, dtype=np.float32).reshape(RNN_SHAPE)
        context = np.asarray(st.context, dtype=np.float32).reshape(CONTEXT_SAMPLES)
        if row is None:
            with self._lock:
                if not self._free:
                    self._grow()
                row = self._free.pop()
            self._row[id(st)] = row
            self._states[id(st)] = st
            weakref.finalize(st, self._release, id(st), row)
        self.rnn[row] = rnn[:, 0, :]
        self.context[row] = context
        self._point(st, row)
        return row

    def _point(self, st: SessionVadState, row: int) -> None:
        st.rnn_state = self.rnn[row][:, None, :]
        st.context = self.context[row]

    def _grow(self) -> None:
        size = len(self.rnn)
        rnn = np.zeros((2 * size, *self.rnn.shape[1:]), dtype=np.float32)
        context = np.zeros((2 * size, CONTEXT_SAMPLES), dtype=np.float32)
        rnn[:size], context[:size] = self.rnn, self.context
        self.rnn, self.context = rnn, context
        self._free.extend(range(2 * size - 1, size - 1, -1))
        for key, st in list(self._states.items()):
            self._point(st, self._row[key])

    def _release(self, key: int, row: int) -> None:
        with self._lock:
            del self._row[key]
            self._free.append(row)
