"""libra: train, run and benchmark Libra (Xu et al., ICML 2024).

Kept deliberately light: importing ``libra`` (or the metric modules of ``libra.benchmark``) must not
import torch. Sub-packages:

- ``libra.model``      the network (config, routed visual expert, bridge attention, generation)
- ``libra.tokenizer``  image preprocessing, CLIP + LFQ vision tokenizer, text tokenizer, processor
- ``libra.data``       dataset readers (webdataset, COCO Karpathy, LLaVA, VQA) and the synthetic set
- ``libra.train``      the DeepSpeed training recipe
- ``libra.benchmark``  VQA / captioning metrics (pure Python) and the evaluation runner
- ``libra.serve``      the OpenAI-compatible HTTP server (``task=serve``) and the web demo (``task=demo``)

The Python API, ``from libra import LibraForCausalLM, LibraProcessor``, is ``libra.api``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra.api import LibraForCausalLM, LibraProcessor

__version__ = "0.1.0"
__all__ = ["LibraForCausalLM", "LibraProcessor", "__version__"]
_PYTHON_API = ("LibraForCausalLM", "LibraProcessor")


def __getattr__(name: str):
    # The two API classes need torch and transformers, which `import libra` must not load; Python
    # calls this only for a name the module lacks, so they are imported on first use (PEP 562).
    if name in _PYTHON_API:
        from libra import api

        return getattr(api, name)
    raise AttributeError(f"module 'libra' has no attribute {name!r}")
