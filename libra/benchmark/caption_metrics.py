"""COCO caption metrics, as ``pycocoevalcap.eval.COCOEvalCap.evaluate`` computes them.

``score_captions`` tokenises references and candidates (PTB: the pure-Python emulation by
default, the Java tokenizer when asked), then runs BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and SPICE
on the tokenised text. Keys and values are those of pycocoevalcap (fractions, not ×100). METEOR
and SPICE need Java (and SPICE its CoreNLP models); when they cannot run they are skipped, their
value is ``None`` and ``notes`` says why — the other metrics are still computed. Pure Python;
imports nothing of libra outside this package and not torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from libra.benchmark import ptb_tokenizer, rouge
from libra.benchmark.bleu import BleuStats, bleu
from libra.benchmark.cider import cider_d
from libra.benchmark.gc_pause import gc_paused
from libra.benchmark.java import JavaUnavailable
from libra.benchmark.ngram_table import caption_batch

METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
BLEU_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
DEFAULT_METRICS = METRICS


@dataclass
class CaptionResult:
    """Corpus scores (``None`` where skipped), per-image scores, skip notes, BLEU totals."""

    overall: dict[str, float | None]
    per_image: dict[Any, dict[str, float]]
    notes: dict[str, str] = field(default_factory=dict)
    bleu_stats: BleuStats | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.overall)
        out["perImage"] = {str(k): v for k, v in self.per_image.items()}
        if self.notes:
            out["notes"] = self.notes
        if self.bleu_stats is not None:
            s = self.bleu_stats
            out["bleu_corpus_stats"] = {
                "testlen": s.testlen,
                "reflen": s.reflen,
                "guess": s.guess,
                "correct": s.correct,
            }
        return out


def _tokenizer(name: str) -> Callable[[Sequence[str]], list[str]]:
    if name == "python":
        return ptb_tokenizer.tokenize
    if name == "java":
        return ptb_tokenizer.tokenize_java
    raise ValueError(f"unknown tokenizer {name!r}: use 'python' (pure-Python PTB emulation) or 'java'")


def score_captions(
    references: Mapping[Any, Sequence[str]],
    candidates: Mapping[Any, str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    tokenizer: str = "python",
) -> CaptionResult:
    """Score one candidate per image against its raw references.

    Images are scored in the order of ``references``; ``candidates`` must hold exactly the same
    ids (the CLI and runner check and name the offenders before calling this).
    """
    with gc_paused():
        return _score_captions(references, candidates, metrics, tokenizer)


def _score_captions(
    references: Mapping[Any, Sequence[str]],
    candidates: Mapping[Any, str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    tokenizer: str = "python",
) -> CaptionResult:
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown caption metrics {unknown}; choose from {list(METRICS)}")
    image_ids = list(references)
    missing = [i for i in image_ids if i not in candidates]
    if missing or len(candidates) != len(image_ids):
        raise ValueError(f"candidates and references differ: missing {missing[:10]}")
    for i in image_ids:
        if not references[i]:
            raise ValueError(f"image {i} has no reference captions")

    # Two tokenizer calls, references then candidates, as pycocoevalcap makes them: the Java
    # lexer's view of a caption's final period reaches into the next caption of the same call.
    tokenize = _tokenizer(tokenizer)
    flat_refs = [r for i in image_ids for r in references[i]]
    tokens = tokenize(flat_refs)
    cands = tokenize([candidates[i] for i in image_ids])
    refs, pos = [], 0
    for i in image_ids:
        refs.append(tokens[pos : pos + len(references[i])])
        pos += len(references[i])

    overall: dict[str, float | None] = {}
    per_image: dict[Any, dict[str, float]] = {i: {} for i in image_ids}
    notes: dict[str, str] = {}
    stats = None

    if "Bleu" in metrics or "CIDEr" in metrics:
        batch = caption_batch(cands, refs)
    if "Bleu" in metrics:
        stats, per_image_bleu = bleu(batch)
        for i, scores in zip(image_ids, per_image_bleu.tolist()):
            per_image[i].update(zip(BLEU_KEYS, scores))
        overall.update(zip(BLEU_KEYS, stats.scores()))
    if "METEOR" in metrics:
        _run_java_metric("METEOR", lambda: _meteor(cands, refs), image_ids, overall, per_image, notes)
    if "ROUGE_L" in metrics:
        scores = [rouge.rouge_l(c, rs) for c, rs in zip(cands, refs)]
        _store("ROUGE_L", sum(scores) / len(scores), scores, image_ids, overall, per_image)
    if "CIDEr" in metrics:
        scores = cider_d(batch).tolist()
        _store("CIDEr", sum(scores) / len(scores), scores, image_ids, overall, per_image)
    if "SPICE" in metrics:
        _run_java_metric(
            "SPICE", lambda: _spice(image_ids, cands, refs), image_ids, overall, per_image, notes
        )
    return CaptionResult(overall, per_image, notes, stats)


def _meteor(cands, refs):
    from libra.benchmark.meteor import meteor

    return meteor(cands, refs)


def _spice(image_ids, cands, refs):
    from libra.benchmark.spice import spice

    return spice(image_ids, cands, refs)


def _store(name, corpus, scores, image_ids, overall, per_image) -> None:
    overall[name] = corpus
    for i, s in zip(image_ids, scores):
        per_image[i][name] = s


def _run_java_metric(name, compute, image_ids, overall, per_image, notes) -> None:
    """Run a Java-backed metric; when Java, a jar or its models are missing, record ``None`` and
    a note instead of failing the whole evaluation."""
    try:
        corpus, scores = compute()
    except (JavaUnavailable, OSError) as err:
        overall[name] = None
        notes[name] = f"{name} skipped: {err}"
        return
    _store(name, corpus, scores, image_ids, overall, per_image)
