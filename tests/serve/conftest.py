"""Servers for the serving tests: the real app under uvicorn on 127.0.0.1 (a free port), in a thread."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import pytest
from PIL import Image
from skimage import data


@dataclass
class RunningServer:
    base_url: str  # http://127.0.0.1:<port>
    engine: object  # the BatchingEngine: its model, processor and stats
    background: object  # libra.serve.app.BackgroundServer

    def stop(self) -> None:
        self.background.stop()


def start_server(folder, **settings) -> RunningServer:
    """The app of `task=serve` on ``folder``, served by uvicorn from a thread on a free port."""
    from libra.pretrained import load_pretrained
    from libra.serve.app import ServeSettings, build_app, start_background_server
    from libra.serve.batching import BatchingEngine

    model, processor = load_pretrained(folder, "cpu")
    batching = {k: settings.pop(k) for k in ("max_batch_size", "window_s") if k in settings}
    engine = BatchingEngine(model, processor, **batching)
    background = start_background_server(build_app(engine, ServeSettings(**settings)))
    return RunningServer(background.url, engine, background)


@pytest.fixture(scope="module")
def server(tiny_export):
    """No API key, at most 2 images, a 50 ms window so that concurrent requests surely meet."""
    running = start_server(tiny_export, max_images=2, default_max_tokens=8, max_batch_size=16, window_s=0.05)
    yield running
    running.stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def data_url(image: Image.Image, format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return f"data:image/{format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())
