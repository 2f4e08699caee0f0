"""Dynamic batching: one worker thread owns the model and decodes concurrent requests together.

Handlers put a :class:`GenerationRequest` on a queue. The worker takes the first one, waits up to
``window_s`` (or until ``max_batch_size`` requests are there) for others to join, and decodes each
group of requests that share their decoding settings as one left-padded batch: one ``generate`` call
for all of them. While a batch decodes, new requests queue up and form the next batch.

Answers stream back token by token: ``generate`` hands each step's tokens to :class:`_BatchStreamer`,
which detokenises every row, applies its stop strings and ``max_tokens``, and sends the new text to
the request's asyncio queue on the server's event loop. A row is answered as soon as it is done,
even while the batch goes on for the others.

Greedy requests batch with any greedy request; sampled requests with the same temperature and top-p;
a request with a ``seed`` decodes on its own (its rows only), so its answer does not depend on which
other requests arrived at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image

from libra.tokenizer.collator import Sample
from libra.tokenizer.processor import LibraProcessor
from libra.tokenizer.samples import CaptionSample, PromptSample

_STOP = object()  # tells the worker to exit
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # sentencepiece's byte fallback
_request_ids = itertools.count()


@dataclass(frozen=True)
class Sampling:
    """How a request's tokens are chosen: greedy when ``temperature`` is 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Delta:
    """New answer text of a request."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The request is done; ``images`` for image requests."""

    reason: Literal["stop", "length"]
    completion_tokens: int
    images: list[Image.Image] = field(default_factory=list)
    text: str = ""  # a text request's whole answer: what its deltas add up to


@dataclass(frozen=True)
class Failed:
    """Decoding the request's batch raised (the server answers 500 and goes on), or its client left."""

    message: str


Event = Delta | Finished | Failed


@dataclass
class GenerationRequest:
    """One row to decode. ``group`` ties the rows of one HTTP request (n images) together."""

    sample: Sample
    prompt_tokens: int
    max_tokens: int
    sampling: Sampling
    kind: Literal["text", "image"] = "text"
    stop: tuple[str, ...] = ()
    group: int = field(default_factory=lambda: next(_request_ids))
    events: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    # set by the handler when its client went away: the worker stops decoding the row (a plain
    # bool: one writer, and a step late is fine)
    cancelled: bool = False

    def batch_key(self) -> tuple:
        """Requests with equal keys decode in one batch."""
        s = self.sampling
        if s.temperature == 0:
            return (self.kind, "greedy")
        return (self.kind, s.temperature, s.top_p, s.seed, self.group if s.seed is not None else None)

    def send(self, event: Event) -> None:
        """Hand ``event`` to the handler waiting on the event loop (thread-safe)."""
        if self.loop is None or self.events is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class RequestError(ValueError):
    """A request the model cannot take (bad messages, over the context); the server answers 400."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


class ServerStats:
    """Counters of the worker, read by ``GET /v1/stats`` and the tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batch_sizes: Counter[int] = Counter()  # in rows: an image request of n images is n rows
        self.requests = 0
        self.completion_tokens = 0
        self.failed_batches = 0

    def record(self, batch: list[GenerationRequest], tokens: int, failed: bool = False) -> None:
        with self._lock:
            self.batch_sizes[len(batch)] += 1
            self.requests += len({row.group for row in batch})
            self.completion_tokens += tokens
            self.failed_batches += int(failed)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "requests": self.requests,
                "rows": sum(size * n for size, n in self.batch_sizes.items()),
                "batches": sum(self.batch_sizes.values()),
                "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
                "max_batch_size": max(self.batch_sizes, default=0),
                "completion_tokens": self.completion_tokens,
                "failed_batches": self.failed_batches,
            }


class BatchingEngine:
    """The model, its processor and the worker thread that batches requests for them.

    Args:
        model: a ``LibraForCausalLM`` in eval mode, on ``device``.
        processor: its ``LibraProcessor`` (vision tokenizer on ``device``).
        max_batch_size: most requests decoded together.
        window_s: how long the first request of a batch waits for others to join.
    """

    def __init__(self, model, processor: LibraProcessor, max_batch_size: int = 16, window_s: float = 0.01):
        self.model = model
        self.processor = processor
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.stats = ServerStats()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="libra-serve-worker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def submit(self, request: GenerationRequest) -> asyncio.Queue:
        """Queue ``request`` (from a coroutine); its events arrive on the returned asyncio queue."""
        return self.submit_group([request])[0]

    def submit_group(self, rows: list[GenerationRequest]) -> list[asyncio.Queue]:
        """Queue the rows of one HTTP request (the n images of an image request) as one item: they
        always decode in one batch, so one seed draws n different images, whatever the load."""
        loop = asyncio.get_running_loop()
        for row in rows:
            row.loop, row.events = loop, asyncio.Queue()
        self._queue.put(rows)
        return [row.events for row in rows]

    # ---- requests -------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    def chat_request(
        self,
        messages: list[dict],
        images: list,
        sampling: Sampling,
        max_tokens: int | None,
        default_max_tokens: int,
        stop: tuple[str, ...] = (),
    ) -> GenerationRequest:
        """A chat prompt (the processor's chat messages + their images) as a request, its length checked
        against the context. Without ``max_tokens`` it gets ``default_max_tokens``, cut to what fits."""
        try:
            # to pixels now, in the caller's thread: an image the preprocessor refuses (an extreme
            # aspect ratio) fails this request, not the whole batch it would decode in
            images = [
                self.processor.preprocessor.worker_pixels(image, key=f"image {i}")
                for i, image in enumerate(images)
            ]
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            sample = PromptSample(prompt, images, key="request")
            prompt_tokens = len(self.processor.collator.encode(sample, generation=True).ids)
        except ValueError as err:  # SampleError is a ValueError
            raise RequestError(str(err), param="messages") from err
        room = self.context_length - prompt_tokens
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            wanted = f" and {max_tokens} completion tokens" if max_tokens is not None else ""
            raise RequestError(
                f"This model's maximum context length is {self.context_length} tokens; the request has "
                f"{prompt_tokens} prompt tokens{wanted}. Shorten the messages or lower max_tokens.",
                param="messages" if room <= 0 else "max_tokens",
                code="context_length_exceeded",
            )
        budget = max_tokens if max_tokens is not None else min(default_max_tokens, room)
        return GenerationRequest(sample, prompt_tokens, budget, sampling, stop=tuple(s for s in stop if s))

    def image_requests(self, prompt: str, n: int, sampling: Sampling) -> list[GenerationRequest]:
        """``n`` rows that each draw one image of ``prompt`` (one group: a seed covers all of them)."""
        sample = CaptionSample(image=None, caption=prompt, key="request", task="t2i")
        try:
            prompt_tokens = len(self.processor.collator.encode(sample, generation=True).ids)
        except ValueError as err:
            raise RequestError(str(err), param="prompt") from err
        image_tokens = self.processor.vocab.tokens_per_image - 1  # the prompt already ends with boi
        if prompt_tokens + image_tokens > self.context_length:
            raise RequestError(
                f"the prompt ({prompt_tokens} tokens) and an image ({image_tokens}) exceed the model's "
                f"context of {self.context_length} tokens; shorten the prompt",
                param="prompt",
                code="context_length_exceeded",
            )
        first = GenerationRequest(sample, prompt_tokens, image_tokens, sampling, "image")
        rest = [
            GenerationRequest(sample, prompt_tokens, image_tokens, sampling, "image", group=first.group)
            for _ in range(n - 1)
        ]
        return [first, *rest]

    # ---- the worker -----------------------------------------------------------------------------
    def _work(self) -> None:
        carried = None  # a request that did not fit the last batch: it opens the next one
        while True:
            first, carried = (self._queue.get() if carried is None else carried), None
            if first is _STOP:
                return
            pending, stopping = list(first), False
            deadline = time.monotonic() + self.window_s
            while len(pending) < self.max_batch_size:
                try:
                    rows = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if rows is _STOP:
                    stopping = True
                    break
                if len(pending) + len(rows) > self.max_batch_size:  # requests are never split
                    carried = rows
                    break
                pending.extend(rows)
            groups: dict[tuple, list[GenerationRequest]] = {}
            for request in pending:
                if request.cancelled:  # its client left while it waited
                    continue
                groups.setdefault(request.batch_key(), []).append(request)
            for group in groups.values():
                self._decode(group)
            if stopping:
                return

    @torch.no_grad()
    def _decode(self, batch: list[GenerationRequest]) -> None:
        """One ``generate`` call for ``batch``; every request gets its events, or ``Failed``."""
        started = time.perf_counter()
        streamer = _BatchStreamer(batch, self.processor)
        sampling = batch[0].sampling
        try:
            inputs = self.processor([r.sample for r in batch], generation=True, device=self.device)
            generator = None
            if sampling.seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
            sampled = sampling.temperature > 0
            ids = None
            with contextlib.suppress(_BatchDone):
                ids = self.model.generate(
                    **inputs,
                    max_new_tokens=max(r.max_tokens for r in batch),
                    do_sample=sampled,
                    temperature=sampling.temperature if sampled else None,
                    top_p=sampling.top_p if sampled else None,
                    generator=generator,
                    streamer=streamer,
                )
            streamer.end()
            if any(r.kind == "image" for r in batch):
                self._finish_images(batch, ids, inputs["input_ids"].shape[-1], streamer)
        except Exception as err:  # one bad batch must not stop the server: its requests get a 500
            message = f"decoding failed: {type(err).__name__}: {err}"
            print(f"[serve] {message}", flush=True)
            for row in streamer.rows:
                if not row.done:
                    row.done = True
                    row.request.send(Failed(message))
            self.stats.record(batch, streamer.tokens, failed=True)
            return
        self.stats.record(batch, streamer.tokens)
        elapsed = time.perf_counter() - started
        what = f"{len(batch)} request(s)"  # a batch holds one kind of row (`batch_key`)
        if batch[0].kind == "image":
            what = f"{len(batch)} image(s) of {len({r.group for r in batch})} request(s)"
        print(f"[serve] batch of {what}: {streamer.tokens} new tokens in {elapsed:.2f} s", flush=True)

    def _finish_images(self, batch, ids, prompt_length: int, streamer: _BatchStreamer) -> None:
        if all(row.request.cancelled for row in streamer.rows):  # every client left: nobody to answer
            return
        if ids is None:
            raise RuntimeError("generation stopped before the images were complete")
        pictures = self.processor.batch_decode_images(ids, prompt_length=prompt_length)
        for row, images in zip(streamer.rows, pictures):
            if row.request.kind != "image" or row.request.cancelled:
                continue
            if not images:
                raise RuntimeError("the model did not complete an image")
            row.done = True
            row.request.send(Finished("length", len(row.tokens), images=images))


class _BatchDone(Exception):
    """Raised by the streamer to end ``generate`` once every row of the batch has its answer."""


class _Row:
    """Detokenisation of one request's new tokens, with its stop strings and token budget."""

    def __init__(self, request: GenerationRequest, processor: LibraProcessor) -> None:
        self.request = request
        self.processor = processor
        self.tokens: list[torch.Tensor] = []  # (K,) per step
        self.sent = ""  # text already sent
        self.done = False
        # trailing byte pieces (<0x8B>): the tokenizer decodes a run of them as UTF-8 once it ends, and
        # a later byte can turn characters of the run that read fine so far into U+FFFD
        self.byte_run = 0

    def add(self, column: torch.Tensor) -> None:
        if self.done:
            return
        if self.request.cancelled:  # nobody reads the answer: done, without an event
            self.done = True
            return
        self.tokens.append(column)
        if self.request.kind == "image":
            return  # images are decoded whole when the batch ends
        tokenizer = self.processor.text_tokenizer
        eos = int(column[0]) == tokenizer.eos_token_id
        piece = tokenizer.convert_ids_to_tokens(int(column[0]))  # None for an image code
        self.byte_run = self.byte_run + 1 if piece is not None and _BYTE_PIECE.fullmatch(piece) else 0
        text = self.text()
        cut = min((i for i in (text.find(s) for s in self.request.stop) if i >= 0), default=-1)
        if cut >= 0:  # the text before the stop string, exactly (OpenAI's rule)
            self._finish(text[:cut], "stop", strip=False)
        elif eos:
            self._finish(text, "stop")
        elif len(self.tokens) >= self.request.max_tokens:
            self._finish(text, "length")
        else:  # what can no longer change: the text before a run of byte pieces
            settled = self.text(len(self.tokens) - self.byte_run) if self.byte_run else text
            self._send(settled[: len(settled) - self._held_back(settled)])

    def text(self, count: int | None = None) -> str:
        """The answer so far (its first ``count`` tokens): image spans dropped, leading space stripped."""
        tokens = self.tokens[:count]
        if not tokens:
            return ""
        ids = torch.stack(tokens, dim=1)[:, None]  # (K, 1, t)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].lstrip()

    def close(self) -> None:
        """Decoding stopped with this row unfinished: it ran into the batch's token budget."""
        if not self.done and self.request.kind == "text":
            self._finish(self.text(), "length")

    def _held_back(self, text: str) -> int:
        """Characters at the end of ``text`` not to send yet: the start of a stop string, an
        incomplete UTF-8 character (decoded as U+FFFD until its last byte arrives), or whitespace,
        which the answer keeps only if text or a stop string follows (else it ends stripped, as
        ``task=chat``'s answers do)."""
        hold = max(
            (n for s in self.request.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0
        )
        if text.endswith("\ufffd"):
            hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
        return max(hold, len(text) - len(text.rstrip()))

    def _send(self, text: str) -> None:
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.request.send(Delta(text[len(self.sent) :]))
            self.sent = text

    def _finish(self, text: str, reason: Literal["stop", "length"], strip: bool = True) -> None:
        text = text.rstrip() if strip else text
        self._send(text)
        self.done = True
        self.request.send(Finished(reason, len(self.tokens), text=text))


class _BatchStreamer:
    """``generate``'s streamer: each step's (K, B) tokens go to the rows of the batch."""

    def __init__(self, batch: list[GenerationRequest], processor: LibraProcessor) -> None:
        self.rows = [_Row(r, processor) for r in batch]
        self.tokens = 0

    def put(self, tokens: torch.Tensor) -> None:
        tokens = tokens.cpu()
        for b, row in enumerate(self.rows):
            if not row.done:
                self.tokens += 1
            row.add(tokens[:, b])
        if all(row.done for row in self.rows):
            raise _BatchDone

    def end(self) -> None:
        """Decoding stopped (every row hit eos, or ``max_new_tokens``): finish the text rows left."""
        for row in self.rows:
            row.close()
