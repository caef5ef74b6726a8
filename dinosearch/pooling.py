"""Pooling: the last layer's tokens -> one vector per image (before L2 normalisation).

- cls: the layer-normed CLS token, transformers' `pooler_output` (what torch.hub's DINOv2 returns).
- cls+mean: the CLS token concatenated with the mean of the patch tokens, as DINOv2's linear probes
  use them; twice the model's width (768 for dinov2-small).
- gem: generalised mean (GeM, Radenovic et al. 2018) of the patch tokens, p = 3, over values clamped
  at 1e-6 as in the original: (mean(max(x, 1e-6) ** 3)) ** (1/3).

Register models (`facebook/dinov2-*-with-registers`) order their tokens CLS, registers, patches:
the patch tokens start after `config.num_register_tokens` registers, which are never pooled.

`pooled(net, pooling)` wraps a transformers Dinov2 model into a module whose output's `pooler_output`
is the pooled vector, so every backend (dinosearch.accel) runs it unchanged.
"""

from __future__ import annotations

from typing import Any

GEM_P = 3.0
GEM_EPS = 1e-6


def pooled_dim(hidden_size: int, pooling: str) -> int:
    return 2 * hidden_size if pooling == "cls+mean" else hidden_size


def register_tokens(config: Any) -> int:
    """How many register tokens sit between the CLS token and the patch tokens (0 for plain DINOv2)."""
    return int(getattr(config, "num_register_tokens", 0) or 0)


def pool(hidden: Any, pooling: str, registers: int = 0) -> Any:
    """(n, 1 + registers + patches, width) last hidden state -> (n, dim) pooled, per `pooling`."""
    import torch

    cls = hidden[:, 0]
    patches = hidden[:, 1 + registers :]
    if pooling == "cls":
        return cls
    if pooling == "cls+mean":
        return torch.cat([cls, patches.mean(dim=1)], dim=1)
    if pooling == "gem":
        return patches.float().clamp(min=GEM_EPS).pow(GEM_P).mean(dim=1).pow(1.0 / GEM_P)
    raise ValueError(f"unknown pooling {pooling!r}")


def pooled(net: Any, pooling: str) -> Any:
    """`net` itself for "cls" (its pooler_output); otherwise a module whose pooler_output is `pool(...)`."""
    if pooling == "cls":
        return net
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    registers = register_tokens(net.config)

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = net
            self.config = net.config  # read by the backends (the number of layers)

        def forward(self, pixel_values: "torch.Tensor") -> Any:
            hidden = self.model(pixel_values=pixel_values).last_hidden_state  # layer-normed, as pooler_output
            return BaseModelOutputWithPooling(pooler_output=pool(hidden, pooling, registers))

    return Pooled().eval()
