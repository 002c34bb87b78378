"""One LLM factory from a config section (annotator: and coder:), and the sampling settings of
a section reaching the backends: HTTP on the wire, vLLM's SamplingParams (a stand-in module,
no GPU here), the coder section behind `mmotif plan`."""

from __future__ import annotations

import argparse
import contextlib
import sys
import types

import pytest
from fake_llm import FakeModel

from mmotif.annotators.offline import make_backend_from_config
from mmotif.cli import add_plan_arguments
from mmotif.codegen.generate import coder_config
from mmotif.config import CoderConfig, RunConfig, preset, with_overrides
from mmotif.llm import DEFAULT_MODEL, SMALL_MODEL, backend_from_config
from mmotif.llm.openai_http import OpenAIHTTPBackend
from mmotif.llm.openai_server import serve
from mmotif.llm.weights import EMBEDDED_MODELS

QUESTION = [{"role": "user", "content": "Say yes."}]


@contextlib.contextmanager
def recording_server():
    """mmotif's own OpenAI-compatible server around a FakeModel: (url, the model)."""
    model = FakeModel()
    server = serve(model)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", model
    finally:
        server.shutdown()
        server.server_close()


def test_default_model_names_are_known_embedded_models():
    assert DEFAULT_MODEL in EMBEDDED_MODELS and SMALL_MODEL in EMBEDDED_MODELS
    cfg = RunConfig()
    assert cfg.annotator.model == cfg.coder.model == DEFAULT_MODEL
    assert preset("local").annotator.model == SMALL_MODEL


def test_coder_section_defaults_are_what_codegen_used():
    coder = RunConfig().coder
    assert coder == CoderConfig()
    assert (coder.backend, coder.model, coder.base_url) == ("embedded", DEFAULT_MODEL, None)
    assert (coder.temperature, coder.top_p, coder.top_k, coder.max_tokens) == (0.2, 1.0, -1, 4096)
    assert "coder" in RunConfig().model_dump()


def test_annotator_sampling_goes_over_the_wire():
    with recording_server() as (url, model):
        cfg = with_overrides(RunConfig(), {"annotator": {"backend": "openai", "base_url": url, "model": "fake-model"}})
        backend = make_backend_from_config(cfg)
        assert isinstance(backend, OpenAIHTTPBackend)
        assert (backend.top_p, backend.top_k) == (0.95, 50)
        assert backend.chat([QUESTION], max_tokens=8, temperature=0.1)
        assert backend.chat([QUESTION], max_tokens=8, temperature=0.1, top_p=0.5, top_k=3)
        assert backend.yes_no_scores([QUESTION]) == [pytest.approx(1.7)]  # greedy: no chat call
        backend.close()
    assert model.sampled == [(0.1, 0.95, 50), (0.1, 0.5, 3)]


def test_coder_section_builds_the_same_client():
    with recording_server() as (url, model):
        coder = CoderConfig(backend="openai", base_url=url, model="fake-model")
        backend = backend_from_config(coder, section="coder")
        backend.chat([QUESTION], temperature=0.2)
        backend.close()
    assert model.sampled == [(0.2, 1.0, -1)]  # the coder's top_k is off: not sent


def test_concurrency_and_deadline_come_from_the_section():
    with recording_server() as (url, _):
        cfg = with_overrides(RunConfig(), {"annotator": {"backend": "openai", "base_url": url, "model": "fake-model",
                                                         "batch_size": 16, "request_timeout_s": 600}})
        backend = make_backend_from_config(cfg)
        assert (backend.max_concurrency, backend.timeout_s) == (16, 600)  # was 4 and 120 whatever the config
        backend.close()
        coder = backend_from_config(CoderConfig(backend="openai", base_url=url, model="fake-model",
                                                max_concurrency=2), section="coder")
        assert coder.max_concurrency == 2
        coder.close()


def test_openai_without_a_url_names_the_section():
    with pytest.raises(ValueError, match=r"annotator\.base_url"):
        make_backend_from_config(with_overrides(RunConfig(), {"annotator": {"backend": "openai"}}))
    with pytest.raises(ValueError, match=r"coder\.base_url"):
        backend_from_config(CoderConfig(backend="openai"), section="coder")


def test_vllm_gets_the_sections_sampling(monkeypatch):
    made = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            made["engine"] = kwargs

        def chat(self, batch, params, use_tqdm=False):
            made.setdefault("params", []).append(params)
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="ok")]) for _ in batch]

    fake = types.SimpleNamespace(LLM=FakeLLM, SamplingParams=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    cfg = preset("cluster")
    backend = make_backend_from_config(cfg)
    assert made["engine"]["model"] == cfg.annotator.model and made["engine"]["tensor_parallel_size"] == 4
    assert backend.chat([QUESTION], temperature=0.1) == ["ok"]
    assert backend.chat([QUESTION], temperature=0.0) == ["ok"]
    sampled, greedy = made["params"]
    assert (sampled["top_p"], sampled["top_k"]) == (0.95, 50)
    assert (greedy["top_p"], greedy["top_k"]) == (1.0, -1)


def _plan_args(*argv: str, with_config: bool = False):
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    if with_config:
        parser.add_argument("--config", default=None)
        parser.add_argument("--preset", default=None)
        parser.add_argument("--set", action="append", default=[])
    return parser.parse_args(list(argv))


def test_plan_reads_the_coder_section_and_its_flags_win(tmp_path):
    coder, cache = coder_config(_plan_args())
    assert coder == CoderConfig() and cache is None
    coder, _ = coder_config(_plan_args("--temperature", "0.7", "--max-tokens", "100"))
    assert (coder.temperature, coder.max_tokens, coder.model) == (0.7, 100, DEFAULT_MODEL)
    # another kind on the command line: that kind's default model, unless --model is given
    coder, _ = coder_config(_plan_args("--backend", "openai", "--base-url", "http://h/v1"))
    assert (coder.backend, coder.model, coder.base_url) == ("openai", "default", "http://h/v1")
    # `mmotif plan --config`: the file's coder section
    path = tmp_path / "c.yaml"
    path.write_text("coder:\n  backend: openai\n  base_url: http://srv/v1\n  model: big\n  top_k: 20\n"
                    "paths:\n  model_cache: /tmp/models\n")
    coder, cache = coder_config(_plan_args("--config", str(path), with_config=True))
    assert (coder.backend, coder.model, coder.top_k) == ("openai", "big", 20) and str(cache) == "/tmp/models"
    coder, _ = coder_config(_plan_args("--config", str(path), "--model", "small", with_config=True))
    assert coder.model == "small" and coder.base_url == "http://srv/v1"
