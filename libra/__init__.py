"""libra: train, run and benchmark Libra (Xu et al., ICML 2024).

Sub-packages:

- ``libra.model``      the network (config, routed visual expert, bridge attention, generation)
- ``libra.tokenizer``  image preprocessing, CLIP + LFQ vision tokenizer, text tokenizer, processor
- ``libra.data``       dataset readers (webdataset, COCO Karpathy, LLaVA, VQA) and the synthetic set
- ``libra.train``      the DeepSpeed training recipe
- ``libra.benchmark``  VQA / captioning metrics (pure Python) and the evaluation runner
- ``libra.inference``  ``task=chat``, ``task=generate`` and ``task=benchmark`` on a checkpoint
- ``libra.serve``      the OpenAI-compatible HTTP server (``task=serve``) and the web demo (``task=demo``)

The Python API, ``from libra import LibraForCausalLM, LibraProcessor``, is ``libra.api``; importing
``libra`` imports it (torch and transformers) and registers the classes with transformers' Auto classes.
"""

from libra.api import LibraForCausalLM, LibraProcessor

__version__ = "0.1.0"
__all__ = ["LibraForCausalLM", "LibraProcessor", "__version__"]
