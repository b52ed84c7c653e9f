"""Several probe adapters at one layer, trained in one forward pass over the shared frozen base.

Sample b of a joint batch belongs to adapter k_b; the layer output becomes
out_b + dropout(x_b @ A[k_b] @ B[k_b]), a batched per-sample low-rank map (torch.bmm). Ranks may
differ: A and B are zero-padded to the largest rank, and padding stays exactly zero in training
(its gradients are x·(g·0ᵀ) = 0 and (x·0)ᵀ·g = 0, and AdamW moves nothing with zero gradients and
zero moments), so each slice is the adapter it would be alone.

Dropout: when the caller says which rows and lengths belong to which adapter (`parts`, set per pass
by `write_many`), adapter k draws its own mask from its own generator, seeded like `write` seeds the
global one, over exactly the (rows, length, d) block a separate run would draw. On CPU that is the
same mask bit for bit, so a stacked cell matches its separate run with dropout on too (up to the
floating-point effect of a different batch shape), and it does not depend on which other cells
share its pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memlaw.adapters.probe import ProbeAdapter, bernoulli_dropout, hook_parallel_to_mlp
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
        self.parts: list[tuple[int, int, int]] | None = None
        """Per pass: (adapter k, rows, sequence length) of each block of the batch, in order (for dropout)."""
        self.seeds: list[int] | None = None      # dropout seed of each adapter (`seed_dropout`)
        self._generators: dict[int, torch.Generator] = {}
        self._handles: list = []

    def seed_dropout(self, seeds: list[int]) -> None:
        """Give adapter k its own dropout generator, seeded `seeds[k]` (what `write` does with the global one)."""
        if len(seeds) != len(self.ranks):
            raise AdapterError(f"seed_dropout needs {len(self.ranks)} seeds, got {len(seeds)}")
        self.seeds, self._generators = list(seeds), {}

    def _dropout(self, delta: Tensor) -> Tensor:
        """Dropout on a joint batch: block by block from each adapter's generator when `parts` says how."""
        if not (self.training and self.drop.p > 0 and self.parts is not None and self.seeds is not None):
            return bernoulli_dropout(delta, self.drop.p) if self.training and self.drop.p > 0 else delta
        S = delta.shape[1]
        out, lo = [], 0
        for k, n, length in self.parts:
            d = delta[lo: lo + n, :length]                          # the block a separate run would see
            if k not in self._generators:
                self._generators[k] = torch.Generator(device=delta.device).manual_seed(self.seeds[k])
            out.append(F.pad(bernoulli_dropout(d, self.drop.p, self._generators[k]), (0, 0, 0, S - length)))
            lo += n
        return torch.cat(out)

    @property
    def first_layer(self) -> int:
        return self.layer

    def attach(self, base) -> None:
        self.to(base.device)
        self._handles = hook_parallel_to_mlp(base.layers[self.layer], self._delta)

    def _delta(self, x: Tensor) -> Tensor:
        """x (B, S, D) → dropout(x @ A[k] @ B[k]) with k the adapter of each sample."""
        if isinstance(self.index, int):                         # one adapter for the whole batch
            delta = x @ self.A[self.index].to(x.dtype) @ self.B[self.index].to(x.dtype)
        else:
            A = self.A[self.index].to(x.dtype)                  # (B, D, R)
            B = self.B[self.index].to(x.dtype)                  # (B, R, D)
            delta = torch.bmm(torch.bmm(x, A), B)
        return self._dropout(delta)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def clip_(self, max_norm: float | Tensor) -> Tensor:
        """Clip each adapter's gradient to `max_norm` (one for all, or (K,)) on its own, as separate runs
        would; returns the norms."""
        norms = (self.A.grad.pow(2).sum((1, 2)) + self.B.grad.pow(2).sum((1, 2))).sqrt()   # (K,)
        if isinstance(max_norm, Tensor):
            max_norm = max_norm.to(norms)
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
