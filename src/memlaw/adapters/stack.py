"""Several probe adapters at one layer, trained in one forward pass over the shared frozen base.

Sample b of a joint batch belongs to adapter k_b; the layer output becomes
out_b + dropout(x_b @ A[k_b] @ B[k_b]), a batched per-sample low-rank map (torch.bmm). Ranks may
differ: A and B are zero-padded to the largest rank, and padding stays exactly zero in training
(its gradients are x·(g·0ᵀ) = 0 and (x·0)ᵀ·g = 0, and AdamW moves nothing with zero gradients and
zero moments), so each slice is the adapter it would be alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memlaw.adapters.probe import ProbeAdapter
from memlaw.errors import AdapterError


class ProbeStack(nn.Module):
    def __init__(self, probes: list[ProbeAdapter]):
        super().__init__()
        layers = {p.layer for p in probes}
        if len(layers) != 1:
            raise AdapterError(f"a probe stack needs adapters on one layer, got layers {sorted(layers)}")
        self.layer = layers.pop()
        self.ranks = [p.rank for p in probes]
        d, R = probes[0].A.shape[0], max(self.ranks)
        A = torch.zeros(len(probes), d, R)
        B = torch.zeros(len(probes), R, d)
        for k, p in enumerate(probes):
            A[k, :, : p.rank] = p.A.detach()
            B[k, : p.rank] = p.B.detach()
        self.A, self.B = nn.Parameter(A), nn.Parameter(B)
        self.drop = nn.Dropout(probes[0].drop.p)
        self.index: Tensor | int | None = None   # adapter of each sample (B,), or one for all; set per pass
        self._handles: list = []

    @property
    def first_layer(self) -> int:
        return self.layer

    def attach(self, base) -> None:
        block = base.layers[self.layer]
        seen: dict[str, Tensor] = {}

        def keep(_mod, args, kwargs):
            seen["x"] = args[0] if args else next(iter(kwargs.values()))

        def add(_mod, _args, out):
            h = out[0] if isinstance(out, tuple) else out
            x = seen.pop("x")                                       # (B, S, D)
            if isinstance(self.index, int):                         # one adapter for the whole batch
                delta = x @ self.A[self.index].to(x.dtype) @ self.B[self.index].to(x.dtype)
            else:
                A = self.A[self.index].to(x.dtype)                  # (B, D, R)
                B = self.B[self.index].to(x.dtype)                  # (B, R, D)
                delta = torch.bmm(torch.bmm(x, A), B)
            h = h + self.drop(delta)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        self.to(base.device)
        self._handles = [block.mlp.register_forward_pre_hook(keep, with_kwargs=True),
                         block.register_forward_hook(add)]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def clip_(self, max_norm: float) -> Tensor:
        """Clip each adapter's gradient to `max_norm` on its own (as separate runs would); returns the norms."""
        norms = (self.A.grad.pow(2).sum((1, 2)) + self.B.grad.pow(2).sum((1, 2))).sqrt()   # (K,)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        self.A.grad.mul_(scale[:, None, None])
        self.B.grad.mul_(scale[:, None, None])
        return norms

    def unstack(self, k: int, dropout: float = 0.0) -> ProbeAdapter:
        """Adapter k as a plain, unattached ProbeAdapter."""
        d, r = self.A.shape[1], self.ranks[k]
        p = ProbeAdapter(d, r, self.layer, dropout)
        with torch.no_grad():
            p.A.copy_(self.A[k, :, :r])
            p.B.copy_(self.B[k, :r])
        return p
