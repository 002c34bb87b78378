"""Small helpers shared by the policy network and the reward model."""

from __future__ import annotations

from torch import nn

ORTHOGONAL_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def orthogonal_init_(module: nn.Module, gain: float = 1.0) -> None:
    """Orthogonal weights and zero biases for every Linear/Conv1d/Conv2d, in `modules()` order.

    Embeddings keep PyTorch's default N(0, 1) init (a padding row stays zero); recurrent
    cores are left to their owner.
    """
    for m in module.modules():
        if isinstance(m, ORTHOGONAL_TYPES):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
