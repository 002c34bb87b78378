"""Where a network runs: one rule for the learner and the reward trainer.

`resolve_device(knob, name)` turns a config value (`auto`, `cpu`, `cuda`, `cuda:N`) into a
torch device. Asking for CUDA where torch cannot use it is an error that says why: a
CPU-only torch build, no driver, or a driver older than the torch build's CUDA needs.
"""

from __future__ import annotations

import shutil
import subprocess

import torch

# the oldest driver of each CUDA major's first release (NVIDIA's compatibility table)
_MIN_DRIVER = {11: 450, 12: 525, 13: 580}


def resolve_device(knob: str, name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"{knob} is {name!r} but torch cannot use CUDA here: {cuda_diagnosis()}; "
                               f"set {knob}: cpu (or auto)")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise RuntimeError(f"{knob} is {name!r} but this node has {torch.cuda.device_count()} CUDA "
                               f"device(s) (0-based indices)")
    return torch.device(name)


def cuda_diagnosis() -> str:
    """Why `torch.cuda.is_available()` is false, in words."""
    built_for = torch.version.cuda
    if built_for is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build; install the CUDA build "
                f"(PyPI's default Linux wheel of the same version)")
    need = _MIN_DRIVER.get(int(built_for.split(".")[0]))
    need_text = f"NVIDIA driver >= {need}" if need else "a matching NVIDIA driver"
    driver = nvidia_driver_version()
    if driver is None:
        return (f"torch {torch.__version__} is built for CUDA {built_for} (needs {need_text}) and no "
                f"NVIDIA driver answers (nvidia-smi is missing or fails)")
    return (f"torch {torch.__version__} is built for CUDA {built_for} and needs {need_text}; "
            f"this node's driver is {driver}")


def nvidia_driver_version() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    versions = sorted({line.strip() for line in out.splitlines() if line.strip()})
    return ", ".join(versions) or None
