"""The OpenAI-compatible server with the official `openai` client on loopback (tiny export, in-process
uvicorn): answers equal the Python API's, streaming, stop strings, seeds, image generation, each bad
input (status + OpenAI error body, and the server goes on), API keys, batching under load."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from .conftest import data_url, start_server

QUESTION = "What is in the picture?"


def _api_answer(engine, messages, images, max_new_tokens=8) -> str:
    """What the Python API answers (greedy), the reference for the server's answers."""
    processor, model = engine.processor, engine.model
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=images or None)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return processor.batch_decode(out[:, :, inputs["input_ids"].shape[-1] :], skip_special_tokens=True)[0]


def _image_message(image, text=QUESTION):
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(image)}},
            {"type": "text", "text": text},
        ],
    }


def test_models_lists_the_served_model(client):
    (model,) = client.models.list().data
    assert model.id == "libra" and model.object == "model"
    assert client.models.retrieve("libra") == model
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"


def test_text_chat_answers_like_the_python_api(client, server):
    reply = client.chat.completions.create(
        model="libra", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    expected = _api_answer(server.engine, [{"role": "user", "content": "Say hello."}], [])
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.message.content == expected.strip()
    assert choice.finish_reason in ("stop", "length") and reply.object == "chat.completion"
    prompt = server.engine.processor.apply_chat_template([{"role": "user", "content": "Say hello."}], True)
    assert reply.usage.prompt_tokens == server.engine.processor(text=prompt)["input_ids"].shape[-1]
    assert 1 <= reply.usage.completion_tokens <= 8


def test_image_chat_from_a_data_url_answers_like_the_python_api(client, server, astronaut):
    reply = client.chat.completions.create(model="libra", messages=[_image_message(astronaut)], max_tokens=8)
    expected = _api_answer(
        server.engine,
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        [astronaut],
    )
    assert reply.choices[0].message.content == expected.strip() != ""
    # the same image as MIME base64 (76-column lines, as GNU base64 prints it)
    header, payload = data_url(astronaut).split(",")
    wrapped = header + "," + "\n".join(payload[i : i + 76] for i in range(0, len(payload), 76))
    message = _image_message(astronaut)
    message["content"][0]["image_url"]["url"] = wrapped
    again = client.chat.completions.create(model="libra", messages=[message], max_tokens=8)
    assert again.choices[0].message.content == reply.choices[0].message.content
    assert reply.usage.prompt_tokens > server.engine.processor.vocab.tokens_per_image  # the image is in


def test_streaming_sends_the_same_answer_in_openai_chunks(client, server, astronaut):
    messages = [_image_message(astronaut)]
    whole = client.chat.completions.create(model="libra", messages=messages, max_tokens=8)
    chunks = list(client.chat.completions.create(model="libra", messages=messages, max_tokens=8, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len(chunks) >= 3  # role, at least one piece of text, the finish

    body = {
        "model": "libra",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}  # as OpenAI sends them
    assert httpx.head(f"{server.base_url}/health", timeout=10).status_code == 200
    usage = client.chat.completions.create(
        model="libra",
        messages=body["messages"],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert [c.usage for c in usage][-1].completion_tokens == 3


class _PieceProcessor:
    """Stands in for the processor of a served row: token i decodes to PIECES[i], 0 is eos."""

    PIECES = {1: " a", 2: " small", 3: " ", 4: "\n", 5: " square", 6: "<0x0F>", 7: "<0x7E>", 8: "<0x8B>"}

    class text_tokenizer:  # noqa: N801 (the processor's attribute)
        eos_token_id = 0

        @staticmethod
        def convert_ids_to_tokens(i):
            return _PieceProcessor.PIECES.get(i)

    def batch_decode(self, ids, skip_special_tokens):
        """As sentencepiece: a run of byte pieces is decoded as UTF-8 once, each byte of an invalid
        run becoming U+FFFD (so a later byte can change the characters before it)."""
        text, run = "", b""
        for piece in [self.PIECES.get(int(i), "") for i in ids[0, 0]] + [""]:
            if piece.startswith("<0x"):
                run += bytes([int(piece[3:5], 16)])
                continue
            if run:
                try:
                    text += run.decode()
                except UnicodeDecodeError:
                    text += "\ufffd" * len(run)
                run = b""
            text += piece
        return [text]


@pytest.mark.parametrize(
    "tokens, max_tokens, stop, answer",
    [
        ([1, 2, 3], 3, (), "a small"),  # ends on whitespace: stripped, as task=chat strips
        ([1, 2, 3, 4, 0], 9, (), "a small"),  # whitespace, then eos
        ([1, 2, 3, 5], 4, (), "a small  square"),  # whitespace inside is sent once text follows
        ([1, 2, 3, 5], 9, ("square",), "a small  "),  # a stop string: exactly the text before it
        # "\x0f~" reads fine until 0x8B ends the byte run as invalid UTF-8: held back, never retracted
        ([1, 6, 7, 8, 5], 5, (), "a\ufffd\ufffd\ufffd square"),
    ],
)
def test_an_answer_streams_whole_without_its_trailing_whitespace(tokens, max_tokens, stop, answer):
    from libra.serve.batching import Delta, Finished, GenerationRequest, Sampling, _Row

    request = GenerationRequest(
        sample=None, prompt_tokens=0, max_tokens=max_tokens, sampling=Sampling(), stop=stop
    )
    events = []
    request.send = events.append
    row = _Row(request, _PieceProcessor())
    for token in tokens:
        row.add(torch.tensor([token, token]))
    assert isinstance(events[-1], Finished) and row.done and events[-1].text == answer
    deltas = [e.text for e in events if isinstance(e, Delta)]
    assert "".join(deltas) == answer and (stop or not any(d.isspace() for d in deltas))


def test_stop_strings_cut_the_answer_in_both_modes(client):
    messages = [{"role": "user", "content": "Count to ten."}]
    full = (
        client.chat.completions.create(model="libra", messages=messages, max_tokens=12)
        .choices[0]
        .message.content
    )
    assert len(full) >= 6, full
    stop = full[3:5]
    cut = full[: full.find(stop)]
    reply = client.chat.completions.create(
        model="libra", messages=messages, max_tokens=12, stop=[stop, "\x00never"]
    )
    assert reply.choices[0].message.content == cut and reply.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="libra", messages=messages, max_tokens=12, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut


def test_a_seed_makes_sampling_reproducible(client):
    messages = [{"role": "user", "content": "Tell a story."}]

    def sample(seed):
        reply = client.chat.completions.create(
            model="libra", messages=messages, max_tokens=8, temperature=1.0, top_p=0.9, seed=seed
        )
        return reply.choices[0].message.content

    assert sample(3) == sample(3)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_image_generation_returns_png_images(client, server):
    result = client.images.generate(model="libra", prompt="A  RED Circle", n=2, response_format="b64_json")
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in result.data]
    assert [(im.format, im.size) for im in images] == [("PNG", (56, 56))] * 2
    # the prompt as the model read it: cleaned as its training captions were
    assert [d.revised_prompt for d in result.data] == ["a red circle"] * 2

    greedy = client.images.generate(prompt="a red circle", extra_body={"temperature": 0})
    processor, model = server.engine.processor, server.engine.model
    inputs = processor(text=processor.text_to_image_prompt("a red circle"))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=processor.vocab.tokens_per_image - 1)
    (expected,) = processor.batch_decode_images(out, prompt_length=inputs["input_ids"].shape[-1])[0]
    drawn = Image.open(io.BytesIO(base64.b64decode(greedy.data[0].b64_json)))
    assert np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(expected))


def test_a_seeded_image_request_draws_the_same_n_images_whatever_the_batch_size(tiny_export, client):
    """The n rows of one request decode in one batch, even when n exceeds serve.max_batch_size: split
    over batches, each part would replay the seed's draws and repeat the first part's images."""

    def drawn(images_client) -> list[str]:
        result = images_client.images.generate(model="libra", prompt="a red bus", n=4, extra_body={"seed": 7})
        return [d.b64_json for d in result.data]

    wide = drawn(client)  # the module's server: batches of up to 16
    running = start_server(tiny_export, max_batch_size=2)
    try:
        from openai import OpenAI

        narrow = drawn(OpenAI(base_url=f"{running.base_url}/v1", api_key="unused", max_retries=0, timeout=60))
        stats = running.engine.stats.snapshot()
        assert (stats["batch_sizes"], stats["requests"], stats["rows"]) == ({"4": 1}, 1, 4)
    finally:
        running.stop()
    assert len(set(wide)) == 4 and narrow == wide


def _long_text() -> str:
    return " ".join(f"word{i}" for i in range(600))  # well past the tiny model's 512 positions


NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"this is not a picture").decode()


def _png_claiming(width: int, height: int) -> str:
    """A data URL of a 1 x 1 PNG whose header claims width x height: a server that decodes it before
    checking its size fails on the pixel data (or decodes a bomb), one that checks first refuses it."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # the IHDR's first fields
    png[29:33] = zlib.crc32(png[12:29]).to_bytes(4, "big")  # and its checksum
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode()


STRIP = data_url(Image.new("RGB", (1, 100)))  # an aspect ratio the preprocessor refuses
BAD_INPUTS = {
    "data URL that is not an image": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": NOT_AN_IMAGE}}]}
            ]
        },
        400,
        "invalid_image",
        "messages[0].content[0].image_url",
    ),
    "image that claims 10000 x 10000 pixels": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": _png_claiming(10000, 10000)}}],
                }
            ]
        },
        400,
        "image_too_large",
        "messages[0].content[0].image_url",
    ),
    "image of an extreme aspect ratio": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": STRIP}}]}]},
        400,
        "invalid_image",
        "messages[0].content[0].image_url",
    ),
    "data URL that is not base64": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x,%%"}}]}
            ]
        },
        400,
        None,
        "messages[0].content[0].image_url",
    ),
    "remote URL": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}
            ]
        },
        400,
        None,
        "messages[0].content[0].image_url",
    ),
    "local path while paths are off": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/hostname"}}]}
            ]
        },
        400,
        None,
        "messages[0].content[0].image_url",
    ),
    "too many images": ("three images", 400, "too_many_images", "messages"),
    "prompt over the context": (
        {"messages": [{"role": "user", "content": _long_text()}]},
        400,
        "context_length_exceeded",
        "messages",
    ),
    "completion over the context": (
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000},
        400,
        "context_length_exceeded",
        "max_tokens",
    ),
    "a lone surrogate in the text": (
        {"messages": [{"role": "user", "content": "half an emoji: \ud83d"}]},
        400,
        "invalid_unicode",
        "messages[0].content",
    ),
    "a lone surrogate in a text part": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]},
        400,
        "invalid_unicode",
        "messages[0].content[0].text",
    ),
    "unknown model": (
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        404,
        "model_not_found",
        "model",
    ),
    "max_tokens as a string": (
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"},
        400,
        "int_type",
        "max_tokens",
    ),
    "max_tokens as a boolean": (
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": True},
        400,
        "int_type",
        "max_tokens",
    ),
    "stream as a string": (
        {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
        400,
        "bool_type",
        "stream",
    ),
    "missing messages": ({"messages": None}, 400, "missing", "messages"),
    "empty messages": ({"messages": []}, 400, "too_short", "messages"),
    "a system message": (
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]},
        400,
        None,
        "messages",
    ),
    "n > 1": ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "less_than_equal", "n"),
    "seed out of range": (
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 1, "seed": 2**70},
        400,
        "less_than_equal",
        "seed",
    ),
    "temperature out of range": (
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 5},
        400,
        "less_than_equal",
        "temperature",
    ),
    # the location of a schema error, as the params above: no union branch names of the validator
    "content neither text nor parts": (
        {"messages": [{"role": "user", "content": 5}]},
        400,
        "string_type",
        "messages[0].content",
    ),
    "a text part without text": (
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        400,
        "missing",
        "messages[0].content[0].text",
    ),
    "an image part without its url": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        "missing",
        "messages[0].content[0].image_url.url",
    ),
    "an unknown part type": (
        {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
        400,
        "union_tag_invalid",
        "messages[0].content[0]",
    ),
    "an unknown role": (
        {"messages": [{"role": "robot", "content": "hi"}]},
        400,
        "literal_error",
        "messages[0].role",
    ),
    "stop neither text nor a list": (
        {"messages": [{"role": "user", "content": "hi"}], "stop": 5},
        400,
        "string_type",
        "stop",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_chat_input_gets_a_4xx_with_an_openai_error_body(server, astronaut, case):
    body, status, code, param = BAD_INPUTS[case]
    if body == "three images":
        part = {"type": "image_url", "image_url": {"url": data_url(astronaut.resize((32, 32)))}}
        body = {"messages": [{"role": "user", "content": [part, part, part]}]}
    body = {"model": "libra", **body}
    if body["messages"] is None:
        del body["messages"]
    # json.dumps escapes as a browser's JSON.stringify does: a lone surrogate goes out as \ud83d
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert " object at 0x" not in error["message"]  # no Python object's repr
    ok = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "libra", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert ok.status_code == 200  # the server goes on serving


def test_an_image_the_preprocessor_refuses_fails_its_request_not_the_batch(server):
    """Images become pixels when the request is made (the demo calls chat_request too), so an extreme
    aspect ratio is a RequestError there, never an error of the batch the request would decode in."""
    from libra.serve.batching import RequestError, Sampling

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    with pytest.raises(RequestError, match="aspect ratio") as info:
        server.engine.chat_request(messages, [Image.new("RGB", (1, 100))], Sampling(), None, 8)
    assert info.value.param == "messages"


def test_malformed_json_and_bad_image_requests_get_openai_errors(server, client):
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=b'{"model": "libra", "messages": [',
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    # curl -d without -H: a form body, answered with what to send
    form = httpx.post(f"{server.base_url}/v1/chat/completions", content=b"model=libra", timeout=60)
    assert form.status_code == 400 and "Content-Type: application/json" in form.json()["error"]["message"]
    # a union field names every form it takes
    union = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "libra", "messages": [{"role": "user", "content": 5}]},
        timeout=60,
    )
    assert union.json()["error"]["message"] == (
        "messages[0].content: Input should be a valid string, or: Input should be a valid list"
    )
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="a red circle", size="1024x1024")
    assert info.value.body["param"] == "size" and "56x56" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="a red circle", response_format="url")
    assert info.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="a red circle", extra_body={"seed": -(2**70)})
    assert info.value.body["param"] == "seed"
    with pytest.raises(openai.NotFoundError) as info:
        client.images.generate(prompt="a red circle", model="dall-e-3")
    assert info.value.body["code"] == "model_not_found"
    missing = httpx.get(f"{server.base_url}/v1/nothing-here", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()


def test_a_failing_batch_answers_500_and_the_server_goes_on(server, client, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(server.engine.model, "generate", broken)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="libra", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert "injected fault" in info.value.body["message"] and info.value.body["type"] == "server_error"
    monkeypatch.undo()
    reply = client.chat.completions.create(
        model="libra", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None
    assert server.engine.stats.snapshot()["failed_batches"] >= 1


@pytest.fixture
def decoding_waits_for_a_cancel(server, monkeypatch) -> threading.Event:
    """At its third token, the first row of a batch waits (30 s at most) for its request to be
    cancelled, so the test can leave while it decodes; the event is set when the wait begins."""
    generate, waiting = server.engine.model.generate, threading.Event()

    def generate_until_cancelled(**kwargs):
        streamer = kwargs["streamer"]
        put = streamer.put

        def put_then_wait(tokens):
            put(tokens)
            request = streamer.rows[0].request
            if len(streamer.rows[0].tokens) == 3:
                waiting.set()
                for _ in range(3000):
                    if getattr(request, "cancelled", False):
                        break
                    time.sleep(0.01)

        streamer.put = put_then_wait
        return generate(**kwargs)

    monkeypatch.setattr(server.engine.model, "generate", generate_until_cancelled)
    return waiting


def _tokens_after_leaving(server, client, before: int) -> int:
    """Tokens decoded since ``before`` for the request the test left (a 2-token request answered)."""
    # the worker decodes one batch at a time: once this is answered, the left request's batch ended
    reply = client.chat.completions.create(
        model="libra", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.usage.completion_tokens == 2
    return server.engine.stats.snapshot()["completion_tokens"] - before - 2


LONG_ANSWER = {"model": "libra", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400}


def _post_and_leave(server, path: str, body: dict, decoding: threading.Event) -> None:
    """POST ``body`` as a client that closes its connection once the answer is being decoded."""
    host, port = server.base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        assert decoding.wait(timeout=60)


def test_a_client_that_leaves_mid_stream_stops_its_decoding(server, client, decoding_waits_for_a_cancel):
    """Closing a stream cancels its row: the worker ends the batch instead of decoding up to
    max_tokens for nobody (which would hold up every request queued behind it)."""
    before = server.engine.stats.snapshot()["completion_tokens"]
    body = {**LONG_ANSWER, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        next(lines)  # the role chunk
        next(lines)  # the first text: decoding has begun
    spent = _tokens_after_leaving(server, client, before)
    assert spent < 50, f"{spent} tokens decoded for a client that left"


def test_a_client_that_leaves_before_the_answer_stops_its_decoding(
    server, client, decoding_waits_for_a_cancel
):
    """The same for a plain request (a client that timed out): its row is cancelled, its handler ends."""
    before = server.engine.stats.snapshot()["completion_tokens"]
    _post_and_leave(server, "/v1/chat/completions", LONG_ANSWER, decoding_waits_for_a_cancel)
    spent = _tokens_after_leaving(server, client, before)
    assert spent < 50, f"{spent} tokens decoded for a client that left"


def test_a_body_above_the_size_limit_is_refused_before_it_is_read(tiny_export, astronaut):
    """serve.max_request_mb: a declared Content-Length above it is a 413 at once, a chunked body is
    counted while read; a chunked body below it is answered as usual."""
    running = start_server(tiny_export, max_request_mb=0.25, default_max_tokens=4)
    try:
        url = f"{running.base_url}/v1/chat/completions"
        big = {"model": "libra", "messages": [_image_message(astronaut)]}  # a 512 x 512 photo: ~0.6 MB
        payload = json.dumps(big).encode()
        assert len(payload) > 2**18

        def chunked(data: bytes):
            for start in range(0, len(data), 2**14):
                yield data[start : start + 2**14]

        for content in (payload, chunked(payload)):
            response = httpx.post(
                url, content=content, headers={"content-type": "application/json"}, timeout=60
            )
            assert response.status_code == 413, response.text
            error = response.json()["error"]
            assert error["code"] == "request_too_large" and "serve.max_request_mb=0.25" in error["message"]
        thumbnail = astronaut.resize((64, 64))
        data = json.dumps({"model": "libra", "messages": [_image_message(thumbnail)]}).encode()
        headers = {"content-type": "application/json"}
        response = httpx.post(url, content=chunked(data), headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        question = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}
        expected = _api_answer(running.engine, [question], [thumbnail], max_new_tokens=4)
        assert response.json()["choices"][0]["message"]["content"] == expected.strip()
    finally:
        running.stop()


def test_a_client_that_leaves_an_image_request_stops_its_decoding(
    server, client, decoding_waits_for_a_cancel
):
    """An image request's rows are cancelled too when its client leaves: n x (tokens of an image) for
    nobody would hold up the queue."""
    before, failed = (server.engine.stats.snapshot()[k] for k in ("completion_tokens", "failed_batches"))
    body = {"model": "libra", "prompt": "a red bus", "n": 10}
    _post_and_leave(server, "/v1/images/generations", body, decoding_waits_for_a_cancel)
    spent = _tokens_after_leaving(server, client, before)
    full = 10 * (server.engine.processor.vocab.tokens_per_image - 1)
    assert spent <= 10 * 5, f"{spent} of {full} tokens decoded for a client that left"
    assert server.engine.stats.snapshot()["failed_batches"] == failed  # not an error: nobody to answer


def test_api_key_and_local_paths_when_switched_on(tiny_export, tmp_path, astronaut):
    from openai import OpenAI

    running = start_server(tiny_export, api_key="s3cret", allow_local_paths=True)
    try:
        url = f"{running.base_url}/v1"
        with pytest.raises(openai.AuthenticationError) as info:
            OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/models", timeout=10).status_code == 401  # no header at all
        client = OpenAI(base_url=url, api_key="s3cret", max_retries=0, timeout=60)
        path = tmp_path / "astronaut.png"
        astronaut.save(path)
        local = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(path)}}]}
        inline = {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": data_url(astronaut)}}],
        }
        answers = [
            client.chat.completions.create(model="libra", messages=[m], max_tokens=6)
            .choices[0]
            .message.content
            for m in (local, inline)
        ]
        assert answers[0] == answers[1]
        missing = {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": str(tmp_path / "no.png")}}],
        }
        with pytest.raises(openai.BadRequestError, match="is not a file"):
            client.chat.completions.create(model="libra", messages=[missing])
    finally:
        running.stop()


def test_32_concurrent_requests_are_batched_and_all_answered(client, server, astronaut):
    """A bounded load test: zero errors, every answer the one the request gets alone, batches > 1."""
    small = astronaut.resize((64, 64))
    prompts = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "Name three colours."}],
        [_image_message(small)],
        [_image_message(small, "What colour is it?")],
    ]
    alone = [
        client.chat.completions.create(model="libra", messages=m, max_tokens=4).choices[0].message.content
        for m in prompts
    ]
    before = server.engine.stats.snapshot()

    def ask(i):
        stream = i % 3 == 0
        reply = client.chat.completions.create(
            model="libra", messages=prompts[i % 4], max_tokens=4, stream=stream
        )
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in reply)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(ask, range(32), timeout=120))
    assert answers == [alone[i % 4] for i in range(32)]
    after = server.engine.stats.snapshot()
    # (stats are recorded when a batch ends, a moment after its answers went out: hence >=)
    assert (
        after["requests"] - before["requests"] >= 32 and after["failed_batches"] == before["failed_batches"]
    )
    stats = httpx.get(f"{server.base_url}/v1/stats", timeout=10).json()
    new_batches = {
        int(size): n - before["batch_sizes"].get(size, 0) for size, n in stats["batch_sizes"].items()
    }
    assert max(size for size, n in new_batches.items() if n > 0) > 1, json.dumps(stats)
