"""Backends that answer a chat prompt with JSON whose decoding is constrained to a JSON schema.

- `VllmBackend`: a server through Outlines; the server constrains decoding, so the client compiles nothing. With
  protocol "vllm" (backend `vllm`): vLLM's own `structured_outputs` request field (xgrammar). With protocol
  "openai" (backend `openai`): the OpenAI API's `response_format` json_schema, which any OpenAI-compatible server
  with structured outputs reads (vLLM, SGLang, llama.cpp's server, a hosted API): a user's own larger model.
- `TransformersBackend`: Outlines over transformers in this process, for where vLLM cannot run.

The constraint is checked, not assumed: `check_constrained` sends one request whose schema an unconstrained
reply breaks (a server that ignores the schema field decodes freely and nothing else would notice), and
`check_server` first asks a given server whether it answers and serves the model.

Both sample (temperature 1 by default) and are reproducible: the same prompt, schema and seed give the
same text, for a request decoded alone. A vLLM server that decodes several requests in one batch is not
batch-invariant (on CPU the logits move in the last bits), so with `concurrency` > 1 a seed can sample
other text. Callers validate the text again (json + jsonschema): constrained decoding does not enforce
every schema keyword, and a reply cut at max_tokens is not complete JSON.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from agentqat import defaults
from agentqat.errors import UserError
from agentqat.models import BUILTIN_MODELS, load_model

BACKENDS = ("vllm", "openai", "transformers")
PROTOCOLS = ("vllm", "openai")  # how a server is asked for JSON: vLLM's structured_outputs, or response_format
# The canary: one exact object that no model writes when asked for a sentence, unless its decoding is constrained.
CANARY_REPLY = {"agentqat_canary": "zebra-quartz-17"}
CANARY_SCHEMA = {
    "type": "object",
    "properties": {"agentqat_canary": {"enum": ["zebra-quartz-17"]}},
    "required": ["agentqat_canary"],
    "additionalProperties": False,
}
CANARY_PROMPT = "Write one short sentence about the weather in Paris."
CANARY_MAX_TOKENS = 48
HEALTH_TIMEOUT_S = 5.0


class ManagedServer(Protocol):
    """A server the backend may restart (agentqat.serving.server's VllmServer is one)."""

    base_url: str
    model_name: str

    def ensure_running(self) -> None: ...


class JsonBackend(Protocol):
    name: str  # what the run manifest records, e.g. "vllm http://127.0.0.1:8000/v1 smollm2-135m"
    concurrency: int  # requests worth sending at once (a server batches them; 1 for an in-process model)

    def generate(self, prompt: str, schema: dict, seed: int, max_tokens: int) -> str:
        """Returns the model's reply to the chat prompt, decoding constrained to the JSON schema."""
        ...


class VllmBackend:
    """A vLLM server (>= 0.12) through Outlines. With `server`, every attempt first calls
    `server.ensure_running()`, which restarts a server that died once."""

    def __init__(
        self,
        base_url: str,
        model_name: str,
        timeout_s: float = defaults.LLM_REQUEST_TIMEOUT_S,
        retries: int = defaults.LLM_RETRIES,
        backoff_s: float = defaults.LLM_BACKOFF_S,
        temperature: float = defaults.LLM_TEMPERATURE,
        server: ManagedServer | None = None,
        concurrency: int = defaults.LLM_CONCURRENCY,
        protocol: str = "vllm",
    ):
        import openai
        import outlines

        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.base_url = base_url
        self.model_name = model_name
        self.protocol = protocol
        self.name = f"{protocol} {base_url} {model_name}"
        self.retries = retries
        self.backoff_s = backoff_s
        self.temperature = temperature
        self.server = server
        self.concurrency = concurrency
        # Retries are ours (bounded, with backoff, then a UserError), not the OpenAI client's.
        client = openai.OpenAI(base_url=base_url, api_key="EMPTY", timeout=timeout_s, max_retries=0)
        self._model = (outlines.from_vllm if protocol == "vllm" else outlines.from_openai)(client, model_name)

    @classmethod
    def for_server(cls, server: ManagedServer, **options: Any) -> VllmBackend:
        """Returns a backend for a managed server, restarting it once if it dies."""
        return cls(server.base_url, server.model_name, server=server, **options)

    def generate(self, prompt: str, schema: dict, seed: int, max_tokens: int) -> str:
        """Returns the reply; raises UserError after `retries` failed retries or when the server refuses the request."""
        from outlines.exceptions import APIError
        from outlines.types import JsonSchema

        # Outlines 1.3.3 sends the schema as extra_body={"structured_outputs": {"json": schema}}, the field
        # vLLM >= 0.12 reads (0.32 silently ignores the old `guided_json`), so no override is needed here.
        # No whitespace_pattern: the server runs xgrammar with disable_any_whitespace (see server.py).
        output_type = JsonSchema(schema)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            if self.server is not None:
                self.server.ensure_running()
            try:
                reply = self._model(prompt, output_type, seed=seed, max_tokens=max_tokens, temperature=self.temperature)
                return reply or ""
            except APIError as error:
                if not error.retryable:
                    raise UserError(
                        f"the vLLM server at {self.base_url} refused the request: {error}",
                        f"check that it serves the model {self.model_name!r} (GET {self.base_url}/models)",
                    ) from error
                last_error = error
        raise UserError(
            f"no answer from the vLLM server at {self.base_url} after {self.retries + 1} attempts: {last_error}",
            "start one with `agentqat llm serve` (or set the LLM server URL), or set the LLM backend to transformers",
        ) from last_error


class TransformersBackend:
    """Outlines over a transformers model in this process (fp32, `threads` torch threads while generating)."""

    def __init__(
        self, model: str | Path = defaults.DEFAULT_MODEL, threads: int = defaults.LLM_THREADS, temperature: float = defaults.LLM_TEMPERATURE
    ):
        import outlines

        loaded = load_model(str(model))
        self.name = f"transformers {loaded.directory or model}"
        self.concurrency = 1  # one model in this process: requests run one at a time anyway
        self.threads = threads
        self.temperature = temperature
        self._model = outlines.from_transformers(loaded.model, loaded.tokenizer)
        self._generators: dict[str, Any] = {}  # schema JSON -> Outlines generator (compiling one takes seconds)
        self._lock = threading.Lock()  # torch threads and the global seed are process-wide

    def generate(self, prompt: str, schema: dict, seed: int, max_tokens: int) -> str:
        """Returns the reply, sampled after `transformers.set_seed(seed)`."""
        import outlines
        import torch
        import transformers
        from outlines.types import JsonSchema

        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            if key not in self._generators:
                # outlines-core's default whitespace (any run of blanks) lets a small model ramble in whitespace.
                self._generators[key] = outlines.Generator(self._model, JsonSchema(schema, whitespace_pattern=r"[ ]?"))
            threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                transformers.set_seed(seed)
                return self._generators[key](prompt, max_new_tokens=max_tokens, do_sample=True, temperature=self.temperature)
            finally:
                torch.set_num_threads(threads)


def served_name(model: str) -> str:
    """Returns the name vLLM serves a model under: a built-in name as it is, a directory by its last part."""
    return model if model in BUILTIN_MODELS else Path(model).name


def make_backend(
    kind: str,
    model: str = defaults.DEFAULT_MODEL,
    url: str | None = None,
    server: ManagedServer | None = None,
    threads: int = defaults.LLM_THREADS,
) -> JsonBackend:
    """Returns a backend: "vllm" for the server at `url` (serving `model`) or for a managed `server`; "openai" for
    any OpenAI-compatible server at `url` serving the model named `model` there; "transformers" for `model`
    loaded in this process."""
    if kind == "transformers":
        return TransformersBackend(model, threads=threads)
    if kind == "openai" and url:
        return VllmBackend(url, model, protocol="openai")
    if kind == "openai":
        raise UserError("the openai backend needs the server's URL", "pass --llm-url http://HOST:PORT/v1 and --llm-model NAME as the server lists it")
    if kind == "vllm" and server is not None:
        return VllmBackend.for_server(server)
    if kind == "vllm" and url:
        return VllmBackend(url, served_name(model))
    if kind == "vllm":
        raise UserError("the vllm backend needs a server URL", "pass the URL that `agentqat llm serve` prints")
    raise UserError(f"unknown LLM backend {kind!r}", f"use one of {', '.join(BACKENDS)}")


def check_constrained(backend: JsonBackend) -> None:
    """Returns None when the backend's reply to a prompt asking for prose is exactly the canary object its
    schema admits; raises UserError when the reply breaks the schema (decoding is not constrained)."""
    from importlib.metadata import version

    reply = backend.generate(CANARY_PROMPT, CANARY_SCHEMA, seed=0, max_tokens=CANARY_MAX_TOKENS)
    try:
        constrained = json.loads(reply) == CANARY_REPLY
    except ValueError:  # not JSON (RecursionError is a RuntimeError: a reply of 48 tokens cannot nest that deep)
        constrained = False
    if not constrained:
        raise UserError(
            f"the LLM backend {backend.name} does not constrain its decoding: asked for {json.dumps(CANARY_REPLY)}, "
            f"it replied {reply[:80]!r}",
            f"serve the proposer with vLLM >= 0.12 (structured outputs) and use outlines >= 1.3.3 "
            f"(installed: {version('outlines')})",
        )


def served_models(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> list[str]:
    """Returns the model names an OpenAI-compatible server at base URL `url` lists; raises UserError when
    nothing answers there or the answer is not a model list."""
    fix = "start a server there (`agentqat llm serve` prints its URL) or correct the LLM server URL"
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/models", timeout=timeout_s) as response:
            listing = json.loads(response.read(1_000_000))
        return [str(entry["id"]) for entry in listing["data"]]
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"no LLM server answers at {url} ({reason})", fix) from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"the server at {url} did not answer GET {url.rstrip('/')}/models with a model list", fix) from None


def check_server(url: str, model: str | None = None, protocol: str = "vllm") -> None:
    """Returns None when the server at base URL `url` answers, serves `model` (when given; else its first model) and
    constrains decoding to a JSON schema asked for by `protocol`; raises UserError with one line otherwise. Quick:
    call it before any match."""
    if not url.startswith(("http://", "https://")):
        raise UserError(f"the LLM server URL {url!r} is not an http(s) URL", "write it like http://127.0.0.1:8000/v1")
    models = served_models(url)
    if model is not None and model not in models:
        raise UserError(f"the LLM server at {url} serves {models}, not {model!r}", "set the LLM model to one it serves")
    if not models:
        raise UserError(f"the LLM server at {url} serves no model", "start it with a model")
    check_constrained(VllmBackend(url, model or models[0], timeout_s=defaults.LLM_REQUEST_TIMEOUT_S, retries=0, protocol=protocol))
