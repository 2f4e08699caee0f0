"""libra: train, run and benchmark Libra (Xu et al., ICML 2024).

Kept deliberately light: importing ``libra`` (or the metric modules of ``libra.benchmark``) must not
import torch. Sub-packages:

- ``libra.model``      the network (config, routed visual expert, bridge attention, generation)
- ``libra.tokenizer``  image preprocessing, CLIP + LFQ vision tokenizer, text tokenizer, processor
- ``libra.data``       dataset readers (webdataset, COCO Karpathy, LLaVA, VQA) and the synthetic set
- ``libra.train``      the DeepSpeed training recipe
- ``libra.benchmark``  VQA / captioning metrics (pure Python) and the evaluation runner
"""

__version__ = "0.1.0"
