"""`python run.py task=demo ...` in a real headless Chromium (Debian's package, driven by playwright):
open the page, upload a photo, ask, see the model's answer appear, draw an image; screenshots are
saved in the test's tmp dir. The app's components and handlers are also checked without a browser."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from launch_env import child_environ, free_port
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is in the picture?"


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        reason = "the browser test needs Debian's chromium: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _expected_answer(folder: Path, photo: Path, max_new_tokens: int) -> str:
    from libra import LibraForCausalLM, LibraProcessor

    model, processor = LibraForCausalLM.from_pretrained(folder), LibraProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = processor(text=processor.apply_chat_template(messages, True), images=Image.open(photo))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return processor.batch_decode(out[:, :, inputs["input_ids"].shape[-1] :], skip_special_tokens=True)[0]


def _demo_app(folder: Path):
    """The app of `task=demo` on ``folder``, its engine not started (no handler is run through it)."""
    from libra.pretrained import load_pretrained
    from libra.serve.batching import BatchingEngine
    from libra.serve.demo import build_demo

    model, processor = load_pretrained(folder, "cpu")
    engine = BatchingEngine(model, processor)
    return build_demo(engine, max_new_tokens=6, temperature=0.0), engine


def _component(app, elem_id: str):
    return next(block for block in app.blocks.values() if getattr(block, "elem_id", None) == elem_id)


def test_demo_upload_is_read_as_task_chat_reads_it(tiny_export, tmp_path):
    """A 16-bit photo keeps its pixels (Gradio's own convert("RGB") made it white), and a file that is
    no image is refused with a message naming it (Gradio's own preprocessing showed a bare "Error")."""
    import gradio as gr
    from gradio.data_classes import ImageData

    from libra.tokenizer.image_processing import open_image

    app, _ = _demo_app(tiny_export)
    upload = _component(app, "chat-image")
    photo = tmp_path / "camera16.png"
    Image.fromarray(data.camera().astype(np.uint16) * 257).save(photo)  # a 16-bit greyscale PNG
    shown = upload.preprocess(ImageData(path=str(photo), orig_name="camera16.png"))
    assert np.array_equal(np.asarray(shown), np.asarray(open_image(photo)))
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(gr.Error, match="'notes.jpg' is not an image the demo can read"):
        upload.preprocess(ImageData(path=str(text), orig_name="notes.jpg"))


def test_demo_chat_trash_button_starts_a_new_conversation(tiny_export):
    """The chatbot's trash button empties the chat shown and the conversation kept for the next
    question, as "New conversation" does (it used to leave the turns and images behind, unseen)."""
    import gradio as gr

    app, _ = _demo_app(tiny_export)
    chatbot = _component(app, "chat")
    states = [block._id for block in app.blocks.values() if isinstance(block, gr.State)]
    (trash,) = [
        d for d in app.config["dependencies"] if (chatbot._id, "clear") in d["targets"] and d["outputs"]
    ]
    values = dict(zip(trash["outputs"], app.fns[trash["id"]].fn()))
    assert states and all(values[state] == [] for state in states) and values[chatbot._id] == []


def test_demo_reset_stops_the_answer_streaming_in(tiny_export, monkeypatch):
    """ "New conversation" (or the trash button) while an answer streams in cancels it: its next chunk
    brought the old chat back onto the emptied page, and the engine stops decoding its row."""
    import asyncio

    app, engine = _demo_app(tiny_export)
    dependencies = app.config["dependencies"]
    respond = [d for d in dependencies if getattr(app.fns[d["id"]].fn, "__name__", "") == "respond"]
    assert len(respond) == 2  # Send and Enter in the question box
    for reset in [(_component(app, "clear")._id, "click"), (_component(app, "chat")._id, "clear")]:
        cancelled = {c for d in dependencies if reset in d["targets"] for c in d["cancels"]}
        assert cancelled == {d["id"] for d in respond}, reset

    submitted = []
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda request: submitted.append(request) or submit(request))

    async def leave_mid_answer() -> None:
        answer = app.fns[respond[0]["id"]].fn("Tell me a story", None, [], [], [])
        await anext(answer)  # the question is shown
        await anext(answer)  # the first words of the answer
        await answer.aclose()  # what Gradio does to the answer a reset cancels

    engine.start()
    try:
        asyncio.run(leave_mid_answer())
    finally:
        engine.stop()
    assert len(submitted) == 1 and submitted[0].cancelled


def test_demo_questions_and_drawings_of_several_people_reach_the_engine_together(tiny_export):
    """Gradio runs one event at a time unless told otherwise: the engine could batch nothing."""
    app, _ = _demo_app(tiny_export)
    names = {d["id"]: getattr(app.fns[d["id"]].fn, "__name__", "") for d in app.config["dependencies"]}
    decoding = [i for i, name in names.items() if name in ("respond", "draw")]
    assert sorted(names[i] for i in decoding) == ["draw", "draw", "respond", "respond"]  # click + Enter
    assert all(app.fns[i].concurrency_limit is None for i in decoding)
    assert _component(app, "t2i-image").format == "png"  # not Gradio's lossy WebP
    assert not [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "t2i-untrained"]


def test_demo_says_when_its_checkpoint_never_learnt_to_draw(tiny_export):
    from libra.pretrained import load_pretrained
    from libra.serve.batching import BatchingEngine
    from libra.serve.demo import build_demo

    model, processor = load_pretrained(tiny_export, "cpu")
    app = build_demo(BatchingEngine(model, processor), 6, 0.0, drawing_trained=False)
    assert "was not trained for text-to-image" in _component(app, "t2i-untrained").value


def test_demo_refuses_what_it_cannot_draw_or_answer_with_advice_for_the_page(tiny_export, tmp_path):
    import asyncio

    import gradio as gr
    from gradio.data_classes import ImageData

    app, engine = _demo_app(tiny_export)
    names = {getattr(app.fns[d["id"]].fn, "__name__", ""): d["id"] for d in app.config["dependencies"]}
    with pytest.raises(gr.Error, match="Seed: an integer from -9223372036854775808"):
        asyncio.run(app.fns[names["draw"]].fn("a red bus", 1.0, 2**70))
    # a question it cannot take is a warning, and the page stays as it was (a gr.Error would cover the
    # chat, the image and the question box with "Error" badges)
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    turns = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, history[1]]
    long_question = " ".join(["circle"] * engine.context_length)
    for question, said in [
        (long_question, "no longer fits the model's context of .* press New"),
        ("", "Type"),
    ]:
        with pytest.warns(UserWarning, match=said):
            shown = asyncio.run(anext(app.fns[names["respond"]].fn(question, None, history, turns, [])))
        assert shown == (history, question, None, turns, [])
    png = io.BytesIO()
    Image.new("L", (10000, 10000)).save(png, format="PNG")
    (tmp_path / "huge.png").write_bytes(png.getvalue()[:200])  # the header alone claims 10000 x 10000
    with pytest.raises(gr.Error, match="'huge.png' is too large: 10000x10000"):
        _component(app, "chat-image").preprocess(
            ImageData(path=str(tmp_path / "huge.png"), orig_name="huge.png")
        )


def test_serving_on_a_port_in_use_fails_before_the_model_loads_naming_serve_port():
    import socket

    from libra.serve.server import check_port_free

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match=f"serve.port={port}: 127.0.0.1:{port} cannot be served"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again


def _words(text: str) -> str:
    return " ".join(text.split())  # the page shows tabs and newlines as spaces


@pytest.mark.slow
def test_demo_page_answers_an_uploaded_image_and_draws(tiny_export, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    expected = _words(_expected_answer(tiny_export, photo, max_new_tokens=6))
    assert expected

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = child_environ(WANDB_MODE="offline", PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
    command = [sys.executable, str(ROOT / "run.py"), "task=demo", f"checkpoint={tiny_export}"]
    command += [f"serve.port={port}", "max_new_tokens=6", "logger=none"]
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "task=demo did not come up: " + log.read_text()[-4000:]
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # (not "networkidle": the page asks for web fonts, which a machine off the network never gets)
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#send", timeout=60_000)
            page.locator("#chat-image input[type=file]").set_input_files(str(photo))
            page.wait_for_selector("#chat-image img", timeout=30_000)
            page.locator("#question textarea").fill(QUESTION)
            page.locator("#send").click()
            answer = page.locator("#chat [data-testid=bot]").last
            answer.wait_for(timeout=60_000)
            deadline = time.monotonic() + 60
            while _words(answer.inner_text()) != expected and time.monotonic() < deadline:
                time.sleep(0.2)
            shown = _words(answer.inner_text())
            page.screenshot(path=str(tmp_path / "demo_chat.png"), full_page=True)
            assert shown == expected, f"page shows {shown!r}, the Python API answers {expected!r}"
            assert _words(page.locator("#chat [data-testid=user]").last.inner_text()) == f"[image] {QUESTION}"
            # Send with nothing typed: a warning, and the page as it was (no "Error" badge over the
            # chat and the question box, which then could not be typed into)
            page.locator("#send").click()
            page.get_by_text("Type a question").wait_for(timeout=30_000)
            assert page.get_by_text("Error", exact=True).count() == 0
            assert _words(page.locator("#chat [data-testid=bot]").last.inner_text()) == expected
            page.locator("#question textarea").click(timeout=5_000)

            page.get_by_role("tab", name="Text to image").click()
            page.locator("#t2i-prompt textarea").fill("a red circle")
            page.locator("#draw").click()
            page.wait_for_selector("#t2i-image img", timeout=60_000)
            page.screenshot(path=str(tmp_path / "demo_draw.png"), full_page=True)
            browser.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert (tmp_path / "demo_chat.png").stat().st_size > 10_000
    text = log.read_text()
    assert f"[demo] web app on {url.rstrip('/')}" in text and "[serve] batch of 1 request(s)" in text
