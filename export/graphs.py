"""The four inference graphs of a model directory, as torch modules wrapping a trained StemJEPA.

These wrappers fix the I/O contract of docs/model_dir.md; the ONNX export and the torch backends
run exactly these modules, so both paths compute the same function.

* :class:`EncoderGraph`   raw log-mel ``(B, 80, T)`` -> tokens ``(B, P, d)`` (normalisation inside)
* :class:`PredictorGraph` tokens ``(1, P, d)`` + cond ``(N, C)`` float | ``(N,)`` int64
                          -> pooled, layer-normed, L2-normed embeddings ``(N, d)``
* :class:`BeatGraph`      tokens ``(B, P, d)`` -> beat activation ``(B, cols * 8)`` in [0, 1]

Causal models add the streaming graphs of engine/stream.py (:func:`build_stream_graphs`):
:class:`EncoderStepGraph` (new columns + key/value cache in, tokens + new keys/values out) and
:class:`PredictorCodeGraph` (a condition's FiLM parameters / class embedding, once per instrument)
and :class:`PredictorTokensGraph` (the predictor per token from that code, before pooling).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.model import pool_embedding


class EncoderGraph(nn.Module):
    def __init__(self, encoder: nn.Module, mean: float, std: float):
        super().__init__()
        self.encoder = encoder
        self.mean = float(mean)
        self.inv_std = 1.0 / float(std)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.encoder((logmel - self.mean) * self.inv_std)


class PredictorGraph(nn.Module):
    """Runs the predictor for N conditions on one context window and pools the result.

    The context tokens are shared by all N instruments. For the FiLM predictor the first linear
    layer does not depend on the condition, so it is computed once on ``(1, P, h)`` and broadcast
    (same arithmetic as expanding the tokens first, N times less work in that layer).
    """

    def __init__(self, predictor: nn.Module, conditioning: str):
        super().__init__()
        self.p = predictor
        self.conditioning = conditioning

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return pool_embedding(self.per_token(tokens, cond))

    def per_token(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``(1, P, d)``, ``(N, C) | (N,)`` -> the predictor's output per token ``(N, P, d)``."""
        return self.from_code(tokens, self.code(cond))

    def code(self, cond: torch.Tensor) -> torch.Tensor:
        """What the predictor takes from a condition, per instrument: ``(N, K)``. FiLM: every
        hidden layer's ``(gamma, beta)`` side by side (``K = (layers - 1) * 2 * hidden``); class:
        the class embedding (``K = d``). Constant while the instrument is, so streaming caches it."""
        p = self.p
        if self.conditioning == "film":
            return torch.cat([film(cond) for film in p.film], dim=-1)
        return p.embed(cond.long())

    def from_code(self, tokens: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """``(1, P, d)``, ``(N, K)`` codes (:meth:`code`) -> ``(N, P, d)``."""
        p = self.p
        if self.conditioning == "film":
            h = tokens  # (1, P, d)
            width = p.layers[0].out_features * 2
            for i, lin in enumerate(p.layers):
                gamma, beta = code[:, i * width:(i + 1) * width].unsqueeze(1).chunk(2, dim=-1)  # (N, 1, H)
                h = F.relu((1.0 + gamma) * lin(h) + beta)  # layer 0: (1,P,H) broadcast to (N,P,H)
            out = p.norm(p.out(h))
        else:
            n = code.shape[0]
            z = tokens.expand(n, -1, -1)
            e = code.unsqueeze(1).expand(-1, z.shape[1], -1)
            h = torch.cat([z, e], dim=-1)
            for lin in p.layers:
                h = F.relu(lin(h))
            out = p.norm(p.out(h))
        return out


class PredictorCodeGraph(PredictorGraph):
    """Streaming: a condition's code, once per instrument: cond ``(N, C) | (N,)`` -> ``(N, K)``."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.code(cond)


class PredictorTokensGraph(PredictorGraph):
    """Streaming: the predictor per token, not pooled: ``(1, P, d)``, code ``(N, K)`` -> ``(N, P, d)``."""

    def forward(self, tokens: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.from_code(tokens, code)


class EncoderStepGraph(nn.Module):
    """Streaming step of a causal encoder (``training.model.Encoder.step``), normalisation inside:
    raw log-mel ``(B, 80, 16 c)`` of the new columns, ``past_age (S,)``, then every layer's cached
    keys ``k_cache_0 .. k_cache_{L-1}`` and values ``v_cache_0 ..`` ``(B, H, S, d/H)`` as separate
    inputs (ONNX Runtime copies any slice of an input, so one stacked cache input would be copied
    whole every hop) -> ``tokens (B, 5 c, d)``, ``k_new, v_new (L, B, H, 5 c, d/H)``."""

    def __init__(self, encoder: nn.Module, mean: float, std: float):
        super().__init__()
        self.encoder = encoder
        self.layers = len(encoder.blocks)
        self.mean = float(mean)
        self.inv_std = 1.0 / float(std)

    def forward(self, logmel, past_age, *caches):
        n = self.layers
        return self.encoder.step((logmel - self.mean) * self.inv_std, caches[:n], caches[n:], past_age)


class BeatGraph(nn.Module):
    def __init__(self, beat_head: nn.Module):
        super().__init__()
        self.head = beat_head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(tokens))


def build_graphs(model, norm: dict) -> dict[str, nn.Module]:
    """``{"encoder", "target_encoder", "predictor", "beat_head"}`` -> eval-mode wrapper modules."""
    g = {
        "encoder": EncoderGraph(model.encoder, norm["mean"], norm["std"]),
        "target_encoder": EncoderGraph(model.target_encoder, norm["mean"], norm["std"]),
        "predictor": PredictorGraph(model.predictor, model.cfg.conditioning),
        "beat_head": BeatGraph(model.beat_head),
    }
    for m in g.values():
        m.eval()
    return g


def build_stream_graphs(model, norm: dict) -> dict[str, nn.Module]:
    """Causal models only: ``{"encoder_step", "target_encoder_step", "predictor_code", "predictor_tokens"}``
    (engine/stream.py) -> eval-mode wrapper modules."""
    if not model.cfg.causal:
        raise ValueError("streaming graphs need a causal model")
    g = {
        "encoder_step": EncoderStepGraph(model.encoder, norm["mean"], norm["std"]),
        "target_encoder_step": EncoderStepGraph(model.target_encoder, norm["mean"], norm["std"]),
        "predictor_code": PredictorCodeGraph(model.predictor, model.cfg.conditioning),
        "predictor_tokens": PredictorTokensGraph(model.predictor, model.cfg.conditioning),
    }
    for m in g.values():
        m.eval()
    return g
