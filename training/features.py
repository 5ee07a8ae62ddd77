"""Torch twin of ``engine.frontend.LogMel`` for batched training on the same filterbank.

``(B, S)`` samples at 16 kHz -> ``(B, n_mels, T)`` log-mel, same frames, same window, same
filterbank as the numpy front end (a test holds them equal).
"""
from __future__ import annotations

import torch

from engine.frontend import FrontEndConfig, hann_window, mel_filterbank


class TorchLogMel(torch.nn.Module):
    def __init__(self, cfg: FrontEndConfig | None = None):
        super().__init__()
        self.cfg = cfg or FrontEndConfig()
        self.register_buffer("window", torch.from_numpy(hann_window(self.cfg.n_fft)).float(), persistent=False)
        self.register_buffer("fb", torch.from_numpy(mel_filterbank(self.cfg)).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
        c = self.cfg
        frames = x.unfold(-1, c.n_fft, c.hop)  # (B, T, n_fft)
        spec = torch.fft.rfft(frames * self.window, dim=-1)
        power = spec.real**2 + spec.imag**2  # (B, T, n_fft//2+1)
        mel = power @ self.fb  # (B, T, n_mels)
        return torch.log(mel + c.eps).transpose(1, 2)
