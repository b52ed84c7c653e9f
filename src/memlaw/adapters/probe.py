"""The paper's adapter: one rank-r map parallel to the whole MLP of one decoder layer.

    x   = the MLP's input at layer L (Llama: post-attention RMSNorm output, norm gain included)
    out = layer_L(h) + dropout(x @ A @ B)            at every position (prompt, answer, generated)

A ∈ R^{d×r} ~ U(−1/√r, 1/√r), B = 0, no α/r scaling, dropout 0.1 in training only
(reference_method §1.2–1.3). Unlike the paper's code, A and B stay float32 (the paper keeps them and
AdamW's state in bf16, so late small updates round away); they are cast to the base's dtype in the
forward pass, and x @ A @ B is never materialised as a d×d matrix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from memlaw.cost import check_feasible
from memlaw.errors import AdapterError

TENSORS = "adapter.safetensors"


def default_layer(n_layers: int, family: str) -> int:
    """The paper's relative depth: Llama 18/32, Qwen 24/36; other families use Llama's."""
    frac = 24 / 36 if family.startswith("qwen") else 18 / 32
    return min(n_layers - 1, round(n_layers * frac))


def make(cfg, base, seed: int = 0) -> "ProbeAdapter":
    """A fresh probe for `base` from an `AdapterConfig` (layer None: the paper's relative depth)."""
    layer = cfg.layer if cfg.layer is not None else default_layer(base.n_layers, base.family)
    if layer >= base.n_layers:
        raise AdapterError(f"layer {layer} does not exist: the model has {base.n_layers} layers (0..{base.n_layers - 1})")
    check_feasible(cfg, base)                # a rank above the hidden size cannot help
    dropout = cfg.dropout if cfg.dropout is not None else 0.1
    return ProbeAdapter(base.hidden_size, cfg.rank, layer, dropout, generator=torch.Generator().manual_seed(seed))


def hook_parallel_to_mlp(block: nn.Module, delta: Callable[[Tensor], Tensor | None]) -> list:
    """Add `delta(x)` to `block`'s output, x being the input of its MLP (None: add nothing).

    Returns the hook handles; `.remove()` them to detach. The MLP input is kept per thread, so passes
    running in several threads at once (the certificate's pass, `memlaw.certify`) each see their own.
    """
    seen = threading.local()

    def keep(_mod, args, kwargs):
        seen.x = args[0] if args else next(iter(kwargs.values()))

    def add(_mod, _args, out):
        h = out[0] if isinstance(out, tuple) else out
        x, seen.x = seen.x, None
        d = delta(x)
        if d is None:
            return out
        h = h + d
        return (h, *out[1:]) if isinstance(out, tuple) else h

    return [block.mlp.register_forward_pre_hook(keep, with_kwargs=True), block.register_forward_hook(add)]


def bernoulli_dropout(x: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Training dropout as ATen's CPU kernel computes it, x * (bernoulli(1 − p) / (1 − p)), on every device.

    One mask stream per generator, with the same draws for the same shapes: a probe stack replays a
    separate run's masks from its own generators. CUDA's fused dropout draws its masks another way,
    so `nn.Dropout` there would give a stacked run other masks than the separate run.
    """
    keep = 1.0 - p
    return x * torch.empty_like(x).bernoulli_(keep, generator=generator).div_(keep)


class ProbeAdapter(nn.Module):
    kind = "probe"

    def __init__(self, d: int, r: int, layer: int, dropout: float = 0.1, *, generator: torch.Generator | None = None):
        super().__init__()
        self.rank, self.layer = r, layer
        bound = r**-0.5
        A = torch.rand(d, r, generator=generator, dtype=torch.float32) * (2 * bound) - bound  # U(−1/√r, 1/√r)
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(torch.zeros(r, d))  # B = 0: the adapter starts as the base model
        self.drop = nn.Dropout(dropout)
        self._handles: list = []
        self.enabled = True

    @property
    def first_layer(self) -> int:
        return self.layer

    def n_params(self) -> int:
        return self.A.numel() + self.B.numel()

    def attach(self, base) -> None:
        """Hook onto `base.layers[self.layer]`: capture the MLP input, add x @ A @ B to the layer output."""
        if self._handles:
            raise AdapterError("probe adapter is already attached")
        self.to(base.device)
        self._handles = hook_parallel_to_mlp(base.layers[self.layer], self._delta)

    def _delta(self, x: Tensor) -> Tensor | None:
        if not self.enabled:
            return None
        delta = x @ self.A.to(x.dtype) @ self.B.to(x.dtype)
        return bernoulli_dropout(delta, self.drop.p) if self.training and self.drop.p > 0 else delta

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model alone while inside (for L_base), the adapter again after."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def save_tensors(self, directory: Path) -> list[str]:
        save_file({"A": self.A.detach().float().cpu().contiguous(), "B": self.B.detach().float().cpu().contiguous()},
                  str(directory / TENSORS))
        return [TENSORS]

    def load_tensors(self, directory: Path) -> None:
        tensors = load_file(str(directory / TENSORS))
        if set(tensors) != {"A", "B"} or tensors["A"].shape != self.A.shape or tensors["B"].shape != self.B.shape:
            raise AdapterError(f"{directory / TENSORS}: expected tensors A {tuple(self.A.shape)} and B "
                               f"{tuple(self.B.shape)}, found {({k: tuple(v.shape) for k, v in tensors.items()})}")
        with torch.no_grad():
            self.A.copy_(tensors["A"])
            self.B.copy_(tensors["B"])

    def meta(self) -> dict:
        return {"layer": self.layer, "dropout": self.drop.p}
