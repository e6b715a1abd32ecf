"""Bridging Gates: fuse segmentation tokens into a depth ViT's tokens (BriGeS).

A gate is two DINOv2-style transformer blocks (pre-LayerNorm, residual, MLP
ratio 4): cross-attention, where the depth tokens query the segmentation
tokens, then self-attention over the fused depth tokens. Every attention uses
**Attention Temperature Scaling**, ``softmax(Q K^T / (sqrt(d) * tau))``: a tau
above 1 softens the attention, so the depth tokens borrow from a wider set of
segmentation tokens instead of locking onto one. tau is either 1 (``none``), a
fixed float (``fixed``) or learned (``learnable``: ``softplus(p) + 1e-6``, so it
stays positive), and can be overridden at inference (:meth:`set_tau`).

The output projections of every residual branch start at zero, so an untrained
gate is exactly the identity on the depth tokens: a bridged model with fresh
gates reproduces the depth model it wraps, and training starts from it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as nnf

TauMode = Literal["none", "fixed", "learnable"]
TAU_MODES: tuple[str, ...] = ("none", "fixed", "learnable")
_TAU_EPS = 1e-6


def _inverse_softplus(value: float) -> float:
    """p with softplus(p) == value (value > 0), stable for large values."""
    return value + math.log(-math.expm1(-value))


class AttentionTemperature(nn.Module):
    """The tau of one gate: 1, a fixed float, or softplus(p) + 1e-6; overridable at inference."""

    def __init__(self, mode: TauMode = "none", tau: float = 1.0) -> None:
        super().__init__()
        if mode not in TAU_MODES:
            raise ValueError(f"tau mode {mode!r} is not one of {', '.join(TAU_MODES)}")
        _check_tau(tau)
        self.mode = mode
        self.fixed = 1.0 if mode == "none" else float(tau)
        self.override: float | None = None
        if mode == "learnable":
            self.raw = nn.Parameter(torch.tensor(_inverse_softplus(float(tau) - _TAU_EPS)))
        else:
            self.register_parameter("raw", None)

    def forward(self) -> torch.Tensor | float:
        """The current tau: the override if set, else the mode's value (a tensor when learnable)."""
        if self.override is not None:
            return self.override
        if self.raw is not None:
            return nnf.softplus(self.raw) + _TAU_EPS
        return self.fixed

    def value(self) -> float:
        """The current tau as a plain float (for identities, logs and configs)."""
        tau = self()
        return float(tau.detach()) if isinstance(tau, torch.Tensor) else float(tau)


def _check_tau(tau: float) -> None:
    if not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")


class TemperedAttention(nn.Module):
    """Multi-head attention with a temperature: softmax(Q K^T / (sqrt(d_head) * tau)) V.

    Queries come from ``x``, keys/values from ``context`` (``x`` itself for
    self-attention). The query is divided by tau before the fused attention
    kernel, which is the same product and keeps a learnable tau differentiable.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"gate width {dim} is not divisible by {num_heads} heads")
        context_dim = dim if context_dim is None else context_dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(context_dim, dim)
        self.value = nn.Linear(context_dim, dim)
        self.out = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _qkv(self, x: torch.Tensor, context: torch.Tensor, tau: torch.Tensor | float):
        q = self._heads(self.query(x)) / tau
        return q, self._heads(self.key(context)), self._heads(self.value(context))

    def probabilities(self, x: torch.Tensor, context: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
        """(B, heads, Nq, Nk) attention probabilities, written out (for inspection and tests)."""
        q, k, _ = self._qkv(x, context, tau)
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
        q, k, v = self._qkv(x, context, tau)
        attended = nnf.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim))
        b, _, n, _ = attended.shape
        return self.out(attended.transpose(1, 2).reshape(b, n, -1))


class _Mlp(nn.Sequential):
    """DINOv2's MLP: Linear -> GELU -> Linear, hidden = ratio * width."""

    def __init__(self, dim: int, ratio: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class BridgingGate(nn.Module):
    """Cross-attention (depth queries, segmentation keys/values) then self-attention.

    Args:
        dim: the depth tokens' width (the depth ViT's hidden size).
        num_heads: attention heads (the depth ViT's).
        context_dim: the segmentation tokens' width (``dim`` when they are
            projected to it first, as :class:`BridgedDepthModel` does).
        mlp_ratio: MLP hidden width / ``dim`` (4 as in DINOv2).
        tau_mode, tau: Attention Temperature Scaling (see the module doc);
            ``tau`` is the fixed value or the learnable one's start.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, mlp_ratio: float = 4.0,
                 tau_mode: TauMode = "none", tau: float = 1.0) -> None:
        super().__init__()
        context_dim = dim if context_dim is None else context_dim
        self.temperature = AttentionTemperature(tau_mode, tau)
        self.cross_norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(context_dim)
        self.cross_attention = TemperedAttention(dim, num_heads, context_dim)
        self.cross_mlp_norm = nn.LayerNorm(dim)
        self.cross_mlp = _Mlp(dim, mlp_ratio)
        self.self_norm = nn.LayerNorm(dim)
        self.self_attention = TemperedAttention(dim, num_heads)
        self.self_mlp_norm = nn.LayerNorm(dim)
        self.self_mlp = _Mlp(dim, mlp_ratio)
        self.zero_residual_outputs()

    def zero_residual_outputs(self) -> None:
        """Zero every residual branch's last projection: the gate becomes the identity."""
        with torch.no_grad():
            for layer in (self.cross_attention.out, self.cross_mlp[-1], self.self_attention.out, self.self_mlp[-1]):
                layer.weight.zero_()
                layer.bias.zero_()

    def set_tau(self, tau: float | None) -> None:
        """Override tau at inference (None = back to the gate's own tau)."""
        if tau is not None:
            _check_tau(tau)
        self.temperature.override = None if tau is None else float(tau)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) depth tokens + (B, M, context_dim) segmentation tokens -> (B, N, dim)."""
        tau = self.temperature()
        context = self.context_norm(context)
        tokens = tokens + self.cross_attention(self.cross_norm(tokens), context, tau)
        tokens = tokens + self.cross_mlp(self.cross_mlp_norm(tokens))
        normed = self.self_norm(tokens)
        tokens = tokens + self.self_attention(normed, normed, tau)
        return tokens + self.self_mlp(self.self_mlp_norm(tokens))
