"""Requests/s and tokens/s of the OpenAI-compatible server on the CPU: concurrent vs one at a time.

    python perf/serve.py [--requests 32] [--max-tokens 16] [--hidden 128] [--layers 4] [--images]

A seeded random Libra (the tiny tokenizer fixture's vocabulary and vision shapes, the given width and
depth) is served in this process by the app of ``task=serve`` on a free loopback port. The same
``--requests`` chat requests (greedy, ``max_tokens`` each, a photo in every other one with
``--images``) are sent through the official ``openai`` client twice: one after the other (the
baseline: every batch has one request), then all at once from as many threads (the server batches
them). Both passes run in this process on the same server, so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from openai import OpenAI
from PIL import Image
from skimage import data

from libra.pretrained import load_pretrained
from libra.serve.app import ServeSettings, build_app, start_background_server
from libra.serve.batching import BatchingEngine
from libra.tokenizer.processor import LibraProcessor
from libra.train.models import tiny_libra

TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "data" / "vision_tokenizer_tiny" / "model"


def build_checkpoint(folder: Path, hidden: int, layers: int) -> Path:
    processor = LibraProcessor.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    model = tiny_libra(processor, hidden, 3 * hidden, layers, max(hidden // 32, 1), initializer_range=0.08)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def messages(i: int, with_images: bool) -> list[dict]:
    text = f"Question {i}: what do you see?"
    if not (with_images and i % 2):
        return [{"role": "user", "content": text}]
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((128, 128)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def run(client: OpenAI, requests: int, max_tokens: int, with_images: bool, workers: int) -> tuple[float, int]:
    """Seconds for all requests and the tokens generated."""

    def ask(i: int) -> int:
        reply = client.chat.completions.create(
            model="libra", messages=messages(i, with_images), max_tokens=max_tokens, temperature=0
        )
        return reply.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        tokens = sum(pool.map(ask, range(requests)))
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--window-ms", type=float, default=10)
    parser.add_argument("--images", action="store_true", help="a photo in every other request")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_checkpoint(Path(tmp), args.hidden, args.layers)
        model, processor = load_pretrained(folder, "cpu")
        engine = BatchingEngine(model, processor, args.max_batch_size, args.window_ms / 1000)
        background = start_background_server(build_app(engine, ServeSettings()))
        client = OpenAI(base_url=f"{background.url}/v1", api_key="unused", max_retries=0, timeout=600)
        try:
            run(client, 2, args.max_tokens, args.images, 1)  # warm-up
            before = engine.stats.snapshot()
            one_s, one_tokens = run(client, args.requests, args.max_tokens, args.images, 1)
            middle = engine.stats.snapshot()
            many_s, many_tokens = run(client, args.requests, args.max_tokens, args.images, args.requests)
            after = engine.stats.snapshot()
        finally:
            background.stop()

    def batches(a: dict, b: dict) -> str:
        sizes = {int(k): n - a["batch_sizes"].get(k, 0) for k, n in b["batch_sizes"].items()}
        return ", ".join(f"{n}x{size}" for size, n in sorted(sizes.items()) if n > 0)

    photos = " (half with a photo)" if args.images else ""
    print(
        f"libra server, CPU ({torch.get_num_threads()} threads): Libra hidden {args.hidden} x "
        f"{args.layers} layers, {args.requests} requests x max_tokens {args.max_tokens}{photos}"
    )
    print(f"{'':14s} {'seconds':>8s} {'requests/s':>11s} {'tokens/s':>9s}  batches (count x size)")
    for name, seconds, tokens, (a, b) in (
        ("one at a time", one_s, one_tokens, (before, middle)),
        ("concurrent", many_s, many_tokens, (middle, after)),
    ):
        rates = f"{args.requests / seconds:11.2f} {tokens / seconds:9.1f}"
        print(f"{name:14s} {seconds:8.2f} {rates}  {batches(a, b)}")
    print(
        f"concurrent / one at a time: {one_s / many_s:.2f}x requests/s, "
        f"{(many_tokens / many_s) / (one_tokens / one_s):.2f}x tokens/s"
    )


if __name__ == "__main__":
    main()
