"""Small helpers shared by the policy network and the reward model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
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


# PyTorch's own CPU convolutions beat oneDNN's for narrow convolutions on few rows (one
# thread, inference). Local network (channels <= 32): message encoder 2 rows 0.80 vs 1.29 ms,
# 6 rows 1.25 vs 2.00; crop encoder 6 rows 0.69 vs 0.89; from 16 rows on the native path is
# 2-8x slower. Paper widths (64-128 channels) are mixed (message 6 rows: 2.77 vs 2.27 ms), so
# they keep oneDNN (bench/README.md, "oneDNN only from 16 rows").
ONEDNN_MIN_ROWS = 16
NATIVE_MAX_CHANNELS = 32


def widest_conv(module: nn.Module) -> int:
    return max((m.out_channels for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))), default=0)


@contextmanager
def cpu_conv_kernels_for(x: torch.Tensor, channels: int) -> Iterator[None]:
    """Pick the faster CPU convolution kernels for a no-grad batch of `len(x)` rows through
    convolutions at most `channels` wide.

    The same function either way (within float tolerance). oneDNN's switch is process-wide,
    so a thread convolving concurrently may get the other kernels for a moment: slower,
    never different numbers. With gradients on (the learner's batches) nothing changes.
    """
    if (torch.is_grad_enabled() or x.device.type != "cpu" or x.shape[0] >= ONEDNN_MIN_ROWS
            or channels > NATIVE_MAX_CHANNELS):
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
