"""`task=demo`: a Gradio web app for a Libra checkpoint: chat about uploaded images with answers that
stream in, and a text-to-image tab.

    python run.py task=demo checkpoint=<any checkpoint> serve.port=7860

It takes the ``serve.host`` / ``serve.port`` keys of ``task=serve`` and decodes through the same
batching engine, so the people using one demo at the same time share decode batches. Prompts are
built by ``LibraProcessor.apply_chat_template``, as in the Python API and the server.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from libra.pretrained import (
    NOT_TRAINED_TO_DRAW,
    default_device,
    load_pretrained,
    read_training_record,
    resolve_pretrained,
    trained_for_text_to_image,
)
from libra.tokenizer.image_processing import ImageError, ImageTooLarge, open_image

from .batching import BatchingEngine, Delta, Failed, RequestError, Sampling
from .protocol import SEED_MAX, SEED_MIN
from .server import check_port_free

IMAGE_TEMPERATURE = 1.0  # the text-to-image tab's default: greedy decoding would draw one image per prompt


def demo(cfg: DictConfig) -> None:
    """Load ``cfg.checkpoint`` and serve the app on ``cfg.serve.host:cfg.serve.port`` until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a lab machine
    check_port_free(cfg.serve.host, cfg.serve.port)  # before the model loads, not after
    device = default_device()
    resolved = resolve_pretrained(cfg.checkpoint)  # once: the weights and their record are one checkpoint
    model, processor = load_pretrained(resolved, device)
    engine = BatchingEngine(model, processor, cfg.serve.max_batch_size, cfg.serve.batch_window_ms / 1000)
    drawing_trained = trained_for_text_to_image(read_training_record(resolved))
    app = build_demo(engine, cfg.max_new_tokens, cfg.temperature, drawing_trained)
    print(f"[demo] web app on http://{cfg.serve.host}:{cfg.serve.port}", flush=True)
    engine.start()
    try:
        app.launch(server_name=cfg.serve.host, server_port=cfg.serve.port, share=False, quiet=True)
    finally:
        engine.stop()


def build_demo(
    engine: BatchingEngine, max_new_tokens: int, temperature: float, drawing_trained: bool | None = None
):
    """The Gradio Blocks app; ``engine`` must be started before it gets requests. ``drawing_trained``:
    whether the checkpoint's training had text-to-image samples (False puts a note on that tab)."""
    import gradio as gr

    def read_upload(payload):
        """The chat image's preprocessing: the upload decoded by ``open_image``, as ``task=chat`` and the
        Python API decode it. Gradio's own ``convert("RGB")`` clips a 16-bit PNG to white, and a file
        Pillow cannot read fails Gradio's preprocessing with a bare "Error" on every component."""
        if payload is None or payload.path is None:  # nothing uploaded, or a data URL
            return gr.Image.preprocess(image, payload)
        name = payload.orig_name or "the upload"
        try:
            return open_image(payload.path, key=name)
        except ImageTooLarge as err:  # its size and the fix
            raise gr.Error(str(err)) from err
        except ImageError as err:  # its message names the server's temporary copy: not for the page
            raise gr.Error(
                f"{name!r} is not an image the demo can read (not an image file, damaged, or too "
                "large); upload a photo (JPEG, PNG, WebP)"
            ) from err

    async def respond(question: str, image, history: list, turns: list, images: list):
        """Stream the answer to ``question`` (about ``image``, if any) after the earlier ``turns``."""
        unchanged = (history, question, image, turns, images)
        # a refusal is a warning that leaves the page as it was: a gr.Error raised here covers the
        # chat, the image and the question box with "Error" badges, and the box can't be typed into
        if not question.strip() and image is None:
            gr.Warning("Type a question (and upload an image, if it is about one).")
            yield unchanged
            return
        parts = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
        turn_images = images + ([image] if image is not None else [])
        messages = turns + [{"role": "user", "content": parts}]
        try:
            request = engine.chat_request(messages, turn_images, Sampling(temperature), None, max_new_tokens)
        except RequestError as err:
            message = str(err)
            if err.code == "context_length_exceeded":  # the API's advice (lower max_tokens) is not ours
                message = (
                    f"The conversation no longer fits the model's context of {engine.context_length} "
                    "tokens: press New conversation to start again."
                )
            gr.Warning(message)
            yield unchanged
            return
        shown = ("[image] " if image is not None else "") + question
        history = history + [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
        yield history, "", None, turns, images
        events = engine.submit(request)
        answer = ""
        try:
            while True:
                event = await events.get()
                if isinstance(event, Failed):
                    raise gr.Error(event.message)
                if not isinstance(event, Delta):
                    answer = event.text  # the whole answer, as the deltas have it
                    history[-1] = {"role": "assistant", "content": answer}
                    break
                answer += event.text
                history[-1] = {"role": "assistant", "content": answer}
                yield history, "", None, turns, images
        finally:
            # a reset or a closed page ends this generator mid-answer: the worker stops decoding the
            # row (once the answer is finished the flag changes nothing)
            request.cancelled = True
        turns = messages + [{"role": "assistant", "content": answer}]
        yield history, "", None, turns, turn_images

    async def draw(prompt: str, temperature: float, seed: float):
        if not prompt.strip():
            raise gr.Error("Describe the image to draw.")
        seed = int(seed or 0)
        if not SEED_MIN <= seed <= SEED_MAX:  # torch's range; outside it the batch would fail
            raise gr.Error(f"Seed: an integer from {SEED_MIN} to {SEED_MAX}.")
        sampling = Sampling(temperature, 1.0, seed)
        try:
            (request,) = engine.image_requests(prompt, 1, sampling)
        except RequestError as err:
            raise gr.Error(str(err)) from err
        event = await engine.submit(request).get()
        if isinstance(event, Failed):
            raise gr.Error(event.message)
        return event.images[0]

    with gr.Blocks(title="Libra") as app:
        gr.Markdown("# Libra\nAsk about an image, or draw one from a description.")
        with gr.Tab("Chat"):
            turns, images = gr.State([]), gr.State([])
            with gr.Row():
                image = gr.Image(type="pil", label="Image (optional)", elem_id="chat-image", scale=1)
                # not a gr.Image subclass: Gradio writes a .pyi stub next to the module of every one
                image.preprocess = read_upload
                chatbot = gr.Chatbot(label="Libra", elem_id="chat", render_markdown=False, scale=2)
            question = gr.Textbox(label="Question", placeholder="What is in the picture?", elem_id="question")
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="send")
                clear = gr.Button("New conversation", elem_id="clear")
            outputs = [chatbot, question, image, turns, images]
            # concurrency_limit=None: Gradio runs one event at a time by default, and the engine can only
            # batch the questions of people using the page together if they reach it together
            answers = [
                trigger(respond, [question, image, chatbot, turns, images], outputs, concurrency_limit=None)
                for trigger in (send.click, question.submit)
            ]
            # the chatbot's own trash button empties the chat on the page; the conversation kept in the
            # states goes with it, or the next answer would follow turns the page no longer shows. A
            # reset stops the answer streaming in, whose next chunk would bring the old chat back.
            for reset in (clear.click, chatbot.clear):
                reset(lambda: ([], "", None, [], []), None, outputs, cancels=answers)
        with gr.Tab("Text to image"):
            if drawing_trained is False:  # as task=generate says it (libra/inference/generate.py)
                gr.Markdown(f"This checkpoint {NOT_TRAINED_TO_DRAW}.", elem_id="t2i-untrained")
            prompt = gr.Textbox(label="Description", placeholder="a red bus", elem_id="t2i-prompt")
            with gr.Row():
                draw_temperature = gr.Slider(
                    0.0, 2.0, value=IMAGE_TEMPERATURE, step=0.05, label="Temperature"
                )
                seed = gr.Number(value=0, precision=0, label="Seed")
            button = gr.Button("Draw", variant="primary", elem_id="draw")
            # PNG: Gradio's default WebP is lossy, and the image would differ from task=generate's
            drawn = gr.Image(type="pil", format="png", label="Image", elem_id="t2i-image", interactive=False)
            for trigger in (button.click, prompt.submit):
                trigger(draw, [prompt, draw_temperature, seed], drawn, concurrency_limit=None)
    return app
