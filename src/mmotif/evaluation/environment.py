"""What produced a run: git revision, package versions, machine. For the report."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("mmotif", "torch", "ray", "nle", "gymnasium", "transformers", "vllm")


def git_revision(folder: Path | None = None) -> str | None:
    """"<sha> (+ local changes)" of the checkout mmotif runs from; None when not a checkout."""
    folder = folder or Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + (" (+ local changes)" if dirty else "")


def package_versions(names=PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an optional one (vllm) that is not installed
    return out


def machine() -> dict[str, str]:
    info = {
        "host": platform.node(),
        "os": platform.platform(terse=True),
        "python": sys.version.split()[0],
        "cpus": str(os.cpu_count()),
    }
    ram = _ram_bytes()
    if ram:
        info["ram"] = f"{ram / 2**30:.1f} GiB"
    gpus = _gpus()
    info["gpu"] = ", ".join(gpus) if gpus else "none"
    return info


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[str]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA setup must not stop the report
        return []


def describe() -> dict:
    return {"git": git_revision(), "packages": package_versions(), "machine": machine()}
