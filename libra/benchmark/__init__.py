"""Benchmarks: VQA accuracy and caption metrics scored like the official tools, and the runner.

The metric modules import neither torch nor anything else of libra; keep this file free of imports.
``evaluate`` (``libra.benchmark.runner.evaluate``) is resolved on first access, so
``from libra.benchmark import evaluate`` works without importing torch at package import.
"""


def __getattr__(name: str):
    if name == "evaluate":
        from libra.benchmark.runner import evaluate

        return evaluate
    raise AttributeError(f"module 'libra.benchmark' has no attribute {name!r}")
