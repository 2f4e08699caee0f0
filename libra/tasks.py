"""The task table: `task=<name>` -> the function that runs it on the composed config.

run.py looks the task up here, and so does every rank that torchrun starts (`python -m libra.launch
<config>`, libra/launch.py), so both run the same function. The entry points are imported here, not
by name: the optional serving extras (fastapi, uvicorn, gradio) load inside `serve` and `demo` only.
"""

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from libra.inference.benchmark import score_checkpoint
from libra.inference.chat import chat
from libra.inference.generate import generate_images
from libra.serve.demo import demo
from libra.serve.server import serve
from libra.train.recipe import train

TASKS: dict[str, Callable[[DictConfig], Any]] = {
    "train": train,
    "benchmark": score_checkpoint,
    "chat": chat,
    "generate": generate_images,
    "serve": serve,
    "demo": demo,
}
