"""torchmetrics wrappers for the benchmark metrics that are sums over items.

VQA accuracy (official or any ``PROCESSORS`` variant) and GQA-style exact match are means of
per-question scores, so their state is two sums that torchmetrics reduces across ranks by itself.
Corpus metrics (BLEU, CIDEr-D, METEOR) are *not* sums of per-image terms — use
``libra.benchmark.distributed.gather_to_rank0`` and score on rank 0 for those. Imports torch; kept
apart from the pure metric modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from libra.benchmark.exact_match import EXACT_MATCH_RULES
from libra.benchmark.vqa_accuracy import PROCESSORS


class VQAAccuracy(Metric):
    """Mean VQA accuracy ×100 over all updates and ranks.

    ``update(predictions, answers)`` takes predicted strings and, per question, the human answers
    (strings or the official answer dicts). ``processor`` names a soft-accuracy variant of
    ``PROCESSORS`` or an exact-match rule of ``EXACT_MATCH_RULES`` (gold = the first answer).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, processor: str = "official", **kwargs) -> None:
        super().__init__(**kwargs)
        if processor not in PROCESSORS and processor not in EXACT_MATCH_RULES:
            names = sorted(PROCESSORS) + sorted(EXACT_MATCH_RULES)
            raise ValueError(f"unknown VQA processor {processor!r}; choose one of {names}")
        self.processor = processor
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence]) -> None:
        if len(predictions) != len(answers):
            raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
        total = 0.0
        for prediction, human in zip(predictions, answers):
            dicts = [a if isinstance(a, dict) else {"answer": a, "answer_id": i} for i, a in enumerate(human)]
            if self.processor in EXACT_MATCH_RULES:
                total += EXACT_MATCH_RULES[self.processor](prediction, dicts[0]["answer"])
            else:
                total += PROCESSORS[self.processor](prediction, dicts)
        self.score_sum += total
        self.count += len(predictions)

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("VQAAccuracy.compute() before any update")
        return 100 * self.score_sum / self.count
