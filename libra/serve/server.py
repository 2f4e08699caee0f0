"""`task=serve`: load a checkpoint and serve the OpenAI-compatible app of ``app.py`` with uvicorn.

    python run.py task=serve checkpoint=<any checkpoint> serve.port=8000

FastAPI and uvicorn are imported inside ``serve``, so the task table (libra/tasks.py) and ``run.py``
load without the serving extras.
"""

from __future__ import annotations

import os
import socket

from omegaconf import DictConfig

from libra.pretrained import default_device, load_pretrained

from .batching import BatchingEngine

API_KEY_ENV = "LIBRA_SERVE_API_KEY"  # the key without writing it into the run dir's config.yaml


def serve(cfg: DictConfig) -> None:
    """Load ``cfg.checkpoint`` and serve it on ``cfg.serve.host:cfg.serve.port`` until interrupted."""
    import uvicorn  # the serving extras (fastapi, uvicorn) load only for this task

    from .app import ServeSettings, build_app

    options = cfg.serve
    check_port_free(options.host, options.port)  # before the model loads, not after
    device = default_device()
    model, processor = load_pretrained(cfg.checkpoint, device)
    settings = ServeSettings(
        model_name=options.model_name,
        api_key=options.api_key or os.environ.get(API_KEY_ENV) or None,
        allow_local_paths=options.allow_local_paths,
        max_images=options.max_images,
        max_request_mb=options.max_request_mb,
        default_max_tokens=cfg.max_new_tokens,
        default_temperature=cfg.temperature,
    )
    engine = BatchingEngine(model, processor, options.max_batch_size, options.batch_window_ms / 1000)
    app = build_app(engine, settings)
    key_note = "API key required" if settings.api_key else "no API key"
    print(
        f"[serve] {settings.model_name}: OpenAI API on http://{options.host}:{options.port}/v1 ({key_note}, "
        f"batches of up to {options.max_batch_size}, {options.batch_window_ms} ms window)",
        flush=True,
    )
    uvicorn.run(app, host=options.host, port=options.port, log_level="info")


def check_port_free(host: str, port: int) -> None:
    """Raise, naming serve.port, when ``host:port`` cannot be bound (another server holds it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Gradio bind
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OSError(
                f"serve.port={port}: {host}:{port} cannot be served ({err.strerror}); another server may "
                f"hold it. Pick another port, e.g. serve.port={port + 1}"
            ) from err
