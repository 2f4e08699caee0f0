"""Serving a Libra checkpoint: the OpenAI-compatible HTTP server of ``task=serve`` and the Gradio web
app of ``task=demo``.

- ``server.py``    ``serve(cfg)``: load the checkpoint, run the app with uvicorn (fastapi loads only here)
- ``app.py``       the FastAPI app (endpoints, validation, error envelope)
- ``batching.py``  the worker thread that owns the model and decodes concurrent requests as one batch
- ``protocol.py``  request and response bodies, field by field as in the OpenAI API
- ``demo.py``      the web app (chat with image upload, text to image) and ``demo(cfg)``
"""
