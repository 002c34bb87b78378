"""The learner's and reward trainer's device: CUDA asked for where torch cannot use it is an
error that says why."""

from __future__ import annotations

import pytest
import torch

from mmotif.models import device as device_mod
from mmotif.models.device import resolve_device


def test_auto_and_cpu_resolve_here():
    assert resolve_device("learner.device", "cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("learner.device", "auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a node where torch cannot use CUDA")
def test_cuda_without_cuda_names_the_knob_and_the_reason():
    with pytest.raises(RuntimeError) as err:
        resolve_device("reward.device", "cuda:0")
    text = str(err.value)
    assert "reward.device" in text and "set reward.device: cpu" in text
    if torch.version.cuda is None:  # this machine's torch is the +cpu build
        assert "CPU-only build" in text and torch.__version__ in text


def test_diagnosis_names_the_driver_a_cuda_build_needs(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(device_mod, "nvidia_driver_version", lambda: "570.86.15")
    text = device_mod.cuda_diagnosis()
    assert "CUDA 13.0" in text and "driver >= 580" in text and "570.86.15" in text
    monkeypatch.setattr(device_mod, "nvidia_driver_version", lambda: None)
    assert "no NVIDIA driver answers" in device_mod.cuda_diagnosis()
