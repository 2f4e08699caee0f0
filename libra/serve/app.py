"""The OpenAI-compatible HTTP app of `task=serve` (FastAPI; ``server.py`` loads the model and runs it).

    python run.py task=serve checkpoint=<any checkpoint> serve.port=8000
    python run.py task=serve checkpoint=<folder> serve.host=0.0.0.0 serve.allow_local_paths=true

Endpoints (``/v1`` needs ``Authorization: Bearer <key>`` when an API key is set):

* ``GET /v1/models``: the one model served (``serve.model_name``); ``GET /v1/models/{id}``: its card.
* ``POST /v1/chat/completions``: text and ``image_url`` parts (data URLs; local paths only with
  ``serve.allow_local_paths``), ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, and
  ``stream: true`` as server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``.
* ``POST /v1/images/generations``: ``n`` images of the prompt as ``b64_json`` PNGs.
* ``GET /v1/stats``: the sizes of the batches decoded so far; ``GET /health``: liveness, no key.

Prompts are built by ``LibraProcessor.apply_chat_template`` and tokenised by the processor, exactly as
``task=chat`` and the Python API do; concurrent requests are decoded together (``batching.py``). Bad
input is answered 4xx with OpenAI's error body and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from libra.tokenizer.image_processing import ImageError, ImageTooLarge

from .batching import BatchingEngine, Delta, Failed, Finished, GenerationRequest, RequestError, Sampling
from .protocol import (
    APIError,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    Usage,
)

MAX_STOP_STRINGS = 4  # OpenAI's limit
# Image codes are drawn, not picked greedily, unless the request says temperature=0: greedy decoding
# would draw the same image n times.
IMAGE_TEMPERATURE = 1.0


@dataclass(frozen=True)
class ServeSettings:
    """What the handlers check requests against (from the ``serve`` config block)."""

    model_name: str = "libra"
    api_key: str | None = None
    allow_local_paths: bool = False
    max_images: int = 4
    max_request_mb: float = 32.0  # a larger request body is answered 413 before it is parsed
    default_max_tokens: int = 64  # when a request names no max_tokens
    default_temperature: float = 0.0  # when a request names no temperature: greedy


@dataclass
class BackgroundServer:
    """A uvicorn server running in a thread of this process (notebooks, tests, perf/serve.py)."""

    url: str  # http://host:port
    server: object  # uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start_background_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> BackgroundServer:
    """Serve ``app`` from a daemon thread; ``port=0`` picks a free port. Returns once it accepts."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="libra-serve-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return BackgroundServer(f"http://{host}:{bound}", server, thread)


def build_app(engine: BatchingEngine, settings: ServeSettings) -> FastAPI:
    """The FastAPI app; it starts ``engine``'s worker on startup and stops it on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="libra", lifespan=lifespan)
    app.add_middleware(_BodyLimit, max_bytes=int(settings.max_request_mb * 2**20))
    handlers = _Handlers(engine, settings)
    _add_error_handlers(app)
    auth = [Depends(handlers.check_api_key)]
    app.api_route("/health", methods=["GET", "HEAD"])(handlers.health)  # HEAD: load balancers' probes
    app.get("/v1/models", dependencies=auth)(handlers.list_models)
    # :path: a model id may hold a / (org/name)
    app.get("/v1/models/{model:path}", dependencies=auth)(handlers.retrieve_model)
    app.get("/v1/stats", dependencies=auth)(handlers.stats)
    app.post("/v1/chat/completions", dependencies=auth)(handlers.chat_completions)
    app.post("/v1/images/generations", dependencies=auth)(handlers.generate_images)
    return app


class _BodyLimit:
    """ASGI middleware: a request body above ``max_bytes`` is answered 413 before the app parses it.
    A declared Content-Length is refused before any byte is read; a chunked body is read up to the
    limit (the app would read it whole anyway) and then handed on, so the handlers still hear of a
    client that disconnects."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"").decode()
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, int(declared))
        if declared:  # the server stops at the declared length: nothing to count
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, size)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, size: int) -> None:
        limit_mb = self.max_bytes / 2**20
        error = APIError(
            413,
            f"the request body is {size / 2**20:.1f} MB, above serve.max_request_mb={limit_mb:g}; send "
            "smaller images (the model sees them at its own resolution), or raise the limit",
            code="request_too_large",
        )
        await JSONResponse(error.body(), status_code=413)(scope, receive, send)


class _Handlers:
    def __init__(self, engine: BatchingEngine, settings: ServeSettings) -> None:
        self.engine = engine
        self.processor = engine.processor
        self.settings = settings
        self.created = int(time.time())

    # ---- small endpoints ----------------------------------------------------------------------
    def check_api_key(self, authorization: str | None = Header(default=None)) -> None:
        if self.settings.api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guessed key was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), self.settings.api_key.encode()
        ):
            raise APIError(
                401, "Incorrect API key provided; send 'Authorization: Bearer <key>'", code="invalid_api_key"
            )

    async def health(self) -> dict:
        return {"status": "ok"}

    async def list_models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.settings.model_name, created=self.created)])

    async def retrieve_model(self, model: str) -> ModelCard:
        # client.models.retrieve(...): clients check the model this way before they use it
        self._check_model(model)
        return ModelCard(id=self.settings.model_name, created=self.created)

    async def stats(self) -> dict:
        return self.engine.stats.snapshot()

    # ---- chat completions ---------------------------------------------------------------------
    async def chat_completions(self, body: ChatCompletionRequest, http: Request):
        request = await run_in_threadpool(self._chat_request, body)
        events = self.engine.submit(request)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            chunks = self._stream(events, request, reply_id, created, include_usage)
            return StreamingResponse(chunks, media_type="text/event-stream")
        # (a streaming response notices a disconnect itself; a plain handler is not told: watch)
        watcher = asyncio.create_task(_cancel_on_disconnect(http, [request]))
        try:
            while isinstance(event := await events.get(), Delta):
                pass  # the answer comes whole with Finished
            if isinstance(event, Failed):
                raise APIError(500, event.message, type="server_error")
        finally:
            watcher.cancel()
        return ChatCompletion(
            id=reply_id,
            created=created,
            model=self.settings.model_name,
            choices=[Choice(message=AssistantMessage(content=event.text), finish_reason=event.reason)],
            usage=_usage(request, event),
        )

    async def _stream(
        self, events, request: GenerationRequest, reply_id: str, created: int, include_usage: bool
    ):
        def chunk(delta: ChunkDelta, finish_reason=None) -> str:
            body = ChatCompletionChunk(
                id=reply_id,
                created=created,
                model=self.settings.model_name,
                choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
            )
            return f"data: {body.model_dump_json()}\n\n"

        try:
            yield chunk(ChunkDelta(role="assistant", content=""))
            while True:
                event = await events.get()
                if isinstance(event, Delta):
                    yield chunk(ChunkDelta(content=event.text))
                elif isinstance(event, Failed):
                    # the status line is sent already: the error goes in the stream
                    yield f"data: {json.dumps(APIError(500, event.message, type='server_error').body())}\n\n"
                    break
                else:
                    yield chunk(ChunkDelta(), finish_reason=event.reason)
                    if include_usage:
                        usage = ChatCompletionChunk(
                            id=reply_id,
                            created=created,
                            model=self.settings.model_name,
                            choices=[],
                            usage=_usage(request, event),
                        )
                        yield f"data: {usage.model_dump_json()}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            # also when the client disconnected (Starlette cancels or closes this generator): the
            # worker must not go on decoding up to max_tokens for nobody, holding up the next batch
            request.cancelled = True

    def _chat_request(self, body: ChatCompletionRequest) -> GenerationRequest:
        """Validate a chat request and build its prompt (runs in a thread: images are decoded here)."""
        self._check_model(body.model)
        messages, images = self._messages(body.messages)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_STRINGS:
            raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} strings, got {len(stop)}", param="stop")
        temperature = self.settings.default_temperature if body.temperature is None else body.temperature
        sampling = Sampling(temperature, body.top_p if body.top_p is not None else 1.0, body.seed)
        max_tokens = body.max_completion_tokens or body.max_tokens
        with _as_api_error():
            return self.engine.chat_request(
                messages, images, sampling, max_tokens, self.settings.default_max_tokens, tuple(stop)
            )

    def _messages(self, messages: list[ChatMessage]) -> tuple[list[dict], list[torch.Tensor]]:
        """OpenAI messages → the processor's chat messages and the images, as pixels, in order."""
        converted, images = [], []
        for i, message in enumerate(messages):
            role = "system" if message.role == "developer" else message.role
            if isinstance(message.content, list):
                parts = []
                for j, part in enumerate(message.content):
                    if part.type == "text":
                        text = _unicode(part.text, f"messages[{i}].content[{j}].text")
                        parts.append({"type": "text", "text": text})
                        continue
                    if len(images) == self.settings.max_images:
                        raise APIError(
                            400,
                            f"too many images: at most {self.settings.max_images} per request",
                            param="messages",
                            code="too_many_images",
                        )
                    where = f"messages[{i}].content[{j}].image_url"
                    images.append(self._image(part.image_url.url, where))
                    parts.append({"type": "image"})
                converted.append({"role": role, "content": parts})
            else:
                converted.append(
                    {"role": role, "content": _unicode(message.content or "", f"messages[{i}].content")}
                )
        return converted, images

    def _image(self, url: str, where: str) -> torch.Tensor:
        """An ``image_url`` (a base64 data URL, or a local path when the server allows it) as the
        preprocessor's uint8 pixels."""
        if url.startswith("data:"):
            header, comma, payload = url.partition(",")
            if not comma or not header.endswith(";base64"):
                raise APIError(
                    400, f"{where}: expected a base64 data URL (data:image/png;base64,...)", param=where
                )
            try:
                # MIME base64 (GNU base64's output) breaks its lines: whitespace is no error
                source = base64.b64decode("".join(payload.split()), validate=True)
            except binascii.Error as err:
                raise APIError(
                    400, f"{where}: the data URL is not valid base64 ({err})", param=where
                ) from err
        elif url.startswith(("http://", "https://")):
            raise APIError(
                400, f"{where}: this server fetches no URLs; send the image as a data URL", param=where
            )
        elif self.settings.allow_local_paths:
            source = url.removeprefix("file://")
            if not Path(source).is_file():
                raise APIError(400, f"{where}: {source!r} is not a file on the server", param=where)
        else:
            raise APIError(
                400,
                f"{where}: local paths are off; send a data URL, or start the server with "
                "serve.allow_local_paths=true",
                param=where,
            )
        try:
            # preprocessed here, not in the worker: an image the preprocessor refuses (an extreme
            # aspect ratio) must fail its own request with a 400, not its whole batch with a 500
            return self.processor.preprocessor.to_uint8(source, key=where)
        except ImageTooLarge as err:
            raise APIError(400, f"{where}: {err}", param=where, code="image_too_large") from err
        except (ImageError, Image.DecompressionBombError) as err:
            raise APIError(400, f"{where}: not an image: {err}", param=where, code="invalid_image") from err

    # ---- images ---------------------------------------------------------------------------------
    async def generate_images(self, body: ImageGenerationRequest, http: Request) -> ImagesResponse:
        if body.model is not None:
            self._check_model(body.model)
        if body.response_format == "url":
            raise APIError(
                400, "this server returns images inline: use response_format='b64_json'", "response_format"
            )
        resolution = self.processor.vision_tokenizer.config.resolution
        if body.size is not None and body.size != f"{resolution}x{resolution}":
            raise APIError(400, f"size: this model draws {resolution}x{resolution} images only", param="size")
        temperature = IMAGE_TEMPERATURE if body.temperature is None else body.temperature
        with _as_api_error():
            rows = self.engine.image_requests(body.prompt, body.n, Sampling(temperature, 1.0, body.seed))
        # what the model reads: the prompt cleaned as the training captions were (lowercase, 64 words)
        drawn = self.processor.collator.caption_cleaner(body.prompt)
        queues = self.engine.submit_group(rows)
        watcher = asyncio.create_task(_cancel_on_disconnect(http, rows))
        data = []
        try:
            for events in queues:
                event = await events.get()
                if isinstance(event, Failed):
                    raise APIError(500, event.message, type="server_error")
                data.append(ImageData(b64_json=_png_base64(event.images[0]), revised_prompt=drawn))
        finally:
            watcher.cancel()
        return ImagesResponse(created=int(time.time()), data=data)

    # ---- checks ---------------------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model != self.settings.model_name:
            raise APIError(
                404,
                f"The model {model!r} does not exist; this server serves {self.settings.model_name!r}",
                param="model",
                code="model_not_found",
            )


async def _cancel_on_disconnect(http: Request, rows: list[GenerationRequest]) -> None:
    """Wait for the client of ``rows`` (one HTTP request) to disconnect (a client that timed out), then
    stop decoding them, which would hold up the requests behind them, and wake their handler."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
    for row in rows:
        row.cancelled = True
        row.send(Failed("the client disconnected"))


@contextlib.contextmanager
def _as_api_error():
    """A request the engine refuses → 400 with its parameter and code."""
    try:
        yield
    except RequestError as err:
        raise APIError(400, str(err), param=err.param, code=err.code) from err


def _param(loc: tuple) -> str | None:
    """A validation error's location in OpenAI's style (``messages[0].content[1].text``), without the
    union branches pydantic inserts (``str``, ``list[tagged-union[TextPart,ImagePart]]``, and a part's
    tag, which repeats the field it selects: ``text`` then ``text``)."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
            continue
        if item in ("str", "int", "float", "bool", "none") or "[" in item or (parts and item == parts[-1]):
            continue
        parts.append(item)
    return ".".join(parts) or None


def _unicode(text: str, where: str) -> str:
    """``text``, checked: JSON can carry a lone surrogate (``"\\ud83d"``, an emoji cut in half), which
    Python keeps in a str but the tokenizer cannot take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise APIError(
            400,
            f"{where}: not valid Unicode: a lone surrogate ({text[err.start]!a}) at character {err.start}; "
            "send whole characters (an emoji is a surrogate pair in a JSON escape)",
            param=where,
            code="invalid_unicode",
        ) from err
    return text


def _usage(request: GenerationRequest, event: Finished) -> Usage:
    return Usage(
        prompt_tokens=request.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=request.prompt_tokens + event.completion_tokens,
    )


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's envelope: ours, FastAPI's body validation, unknown routes, crashes."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [(_param(e.get("loc", ())[1:]), e) for e in err.errors()]
        # the deepest location names the field best; a union reports one error per branch it tried
        param, first = max(errors, key=lambda pe: len(pe[1].get("loc", ())))
        if first.get("type") == "json_invalid":
            detail = first.get("ctx", {}).get("error", first.get("msg"))
            error = APIError(400, f"the request body is not valid JSON ({detail})", code="invalid_json")
        elif param is None and "json" not in request.headers.get("content-type", ""):
            error = APIError(
                400,
                "the request body must be a JSON object sent with Content-Type: application/json",
                code="invalid_request_body",
            )
        else:
            said = list(dict.fromkeys(e.get("msg") for p, e in errors if p == param))
            error = APIError(
                400, f"{param or 'body'}: {', or: '.join(said)}", param=param, code=first.get("type")
            )
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(err.status_code, str(err.detail)).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, err: Exception) -> JSONResponse:
        error = APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error")
        return JSONResponse(error.body(), status_code=500)
