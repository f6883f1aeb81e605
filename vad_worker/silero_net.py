"""Silero's 16 kHz VAD network, run as a few matrix products on the package's own weights.

The package's TorchScript graph spends most of a call in fixed costs, not arithmetic: its
STFT and each of its five convolutions go through a oneDNN convolution that costs about
60 us per call here, however small the batch (torch.profiler at batches of 2 and 16).
The convolutions only ever see 4, 2 and 1 time steps, so they are matrix products over
gathered taps, and the STFT's basis is a periodic Hann window times a DFT, so it is one
``rfft``. Same weights, same arithmetic to float32 rounding; the graph takes 1.3-2.0x as
long per call at batches of 1-256 (``python -m bench --only vad``).

:func:`load` checks the result against the graph it was taken from and says so if a
future package changes the network; the caller then keeps the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The graph's STFT: 256-sample frames every 128 samples over the window plus context,
# reflect-padded by 64 at the end (4 frames, 129 bins).
_FILTER = 256
_HOP = 128
_PAD = 64
_FRAMES = 4
_STRIDES = (1, 2, 2, 1)  # the encoder's four kernel-3, padding-1 convolutions
# How close the products must stay to the graph (probabilities are 0..1; the package
# wrapper test allows 1e-4 over whole utterances).
TOLERANCE = 1e-4


class NetworkChanged(RuntimeError):
    """The package's network is not the one this module re-implements."""


class SileroNet:
    """``forward(x [B, 64+512], state [2, B, 128]) -> (prob [B, 1], state [2, B, 128])``,
    as the graph's inner 16 kHz model."""

    def __init__(self, params: dict[str, Tensor]) -> None:
        try:
            basis = params["stft.forward_basis_buffer"]
            self._convs: list[tuple[Tensor, Tensor, int]] = []
            for i, stride in enumerate(_STRIDES):
                w = params[f"encoder.{i}.reparam_conv.weight"]  # [out, in, 3]
                # Rows ordered tap-major to match the gathered input (see _conv).
                wt = w.permute(2, 1, 0).reshape(3 * w.shape[1], w.shape[0]).contiguous()
                self._convs.append((wt, params[f"encoder.{i}.reparam_conv.bias"], stride))
            # One product for both LSTM inputs: [x, h] @ [W_ih; W_hh]^T.
            self._w_lstm = torch.cat(
                [params["decoder.rnn.weight_ih"], params["decoder.rnn.weight_hh"]], 1
            ).t().contiguous()
            self._b_lstm = params["decoder.rnn.bias_ih"] + params["decoder.rnn.bias_hh"]
            self._w_out = params["decoder.decoder.2.weight"][:, :, 0].t().contiguous()
            self._b_out = params["decoder.decoder.2.bias"]
        except KeyError as err:
            raise NetworkChanged(f"silero network has no parameter {err}") from err
        if tuple(basis.shape) != (2 * (_FILTER // 2 + 1), 1, _FILTER):
            raise NetworkChanged(f"silero STFT basis has shape {tuple(basis.shape)}")
        self._window = torch.hann_window(_FILTER, periodic=True)
        # Reflect-padding by _PAD at the end: padded[n + i] = x[n - 2 - i].
        n = _FRAMES * _HOP + _FILTER - _HOP - _PAD
        self._reflected = torch.arange(n - 2, n - 2 - _PAD, -1)

    @staticmethod
    def _conv(x: Tensor, wt: Tensor, b: Tensor, stride: int) -> Tensor:
        """Kernel-3, padding-1 convolution plus ReLU on channels-last ``x`` [B, L, C]."""
        batch = x.shape[0]
        cols = F.pad(x, (0, 0, 1, 1)).unfold(1, 3, stride)  # [B, L_out, C, 3]
        steps = cols.shape[1]
        cols = cols.transpose(2, 3).reshape(batch * steps, -1)
        return torch.addmm(b, cols, wt).relu_().view(batch, steps, -1)

    def _frames(self, x: Tensor) -> Tensor:
        """The STFT's four windowed frames, [B, 4, 256], written straight into one tensor:
        the graph's reflect-padding of the last 64 samples (the tail of the last frame) is a
        gather, so the padded copy and the windowed copy of it are never made."""
        frames = torch.empty(x.shape[0], _FRAMES, _FILTER)
        whole = _FRAMES - 1
        frames[:, :whole] = x[:, : whole * _HOP + _HOP].unfold(1, _FILTER, _HOP)
        frames[:, whole, : _FILTER - _PAD] = x[:, whole * _HOP:]
        frames[:, whole, _FILTER - _PAD:] = x[:, self._reflected]
        return frames.mul_(self._window)

    def __call__(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        spectrum = torch.fft.rfft(self._frames(x))
        # The graph's STFT magnitude, [B, 4, 129], in one fused pass over the real and
        # imaginary parts (complex abs() is 2.5x slower here, a sum over a trailing pair 4x).
        re, im = spectrum.real, spectrum.imag
        h = torch.addcmul(re * re, im, im).sqrt_()
        for wt, b, stride in self._convs:
            h = self._conv(h, wt, b, stride)
        gates = torch.addmm(self._b_lstm, torch.cat([h[:, 0, :], state[0]], 1), self._w_lstm)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        h_out = torch.sigmoid(o) * torch.tanh(c)
        prob = torch.sigmoid(torch.addmm(self._b_out, h_out.relu(), self._w_out))
        return prob, torch.stack([h_out, c])


def load(graph: torch.nn.Module, samples: int) -> SileroNet:
    """The products for ``graph`` (the package's inner 16 kHz model), checked against it on
    a batch of random windows carried through a few steps of state; raises
    :class:`NetworkChanged` if they differ."""
    params = {k: v.detach().clone() for k, v in graph.named_parameters()}
    params.update({k: v.detach().clone() for k, v in graph.named_buffers()})
    net = SileroNet(params)
    gen = torch.Generator().manual_seed(0)
    state_ref = state_net = torch.zeros(2, 8, 128)
    with torch.inference_mode():
        for scale in (0.01, 0.3, 0.05):
            x = torch.randn(8, samples, generator=gen) * scale
            p_ref, state_ref = graph(x, state_ref)
            p_net, state_net = net(x, state_net)
            diff = float((p_ref - p_net).abs().max())
            if not diff < TOLERANCE:
                raise NetworkChanged(f"products differ from the silero graph by {diff:.2g}")
    return net
