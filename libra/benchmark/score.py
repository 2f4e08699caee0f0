"""Score official result files and print JSON.

    python -m libra.benchmark.score vqa --questions Q.json --annotations A.json --results R.json \\
        [--processor official|lmms_eval_vqav2|...] [--n 2]
    python -m libra.benchmark.score caption --gt GT.json --results R.json \\
        [--metrics Bleu,METEOR,ROUGE_L,CIDEr,SPICE] [--tokenizer python|java]

VQA prints the official ``overall`` / ``perQuestionType`` / ``perAnswerType`` (×100, rounded),
``unrounded`` means, ``evalQA`` and ``perQuestion``. Captioning prints ``Bleu_1``..``Bleu_4``,
``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE`` as fractions (``null`` where skipped, with a note)
and ``perImage``. Missing or extra ids exit with status 2 and name them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from libra.benchmark.caption_metrics import METRICS, CaptionResult, score_captions
from libra.benchmark.exact_match import EXACT_MATCH_RULES
from libra.benchmark.files import (
    InputError,
    check_questions_cover,
    check_vqa_answers,
    load_caption_references,
    load_caption_results,
    load_vqa_annotations,
    load_vqa_questions,
    load_vqa_results,
)
from libra.benchmark.gc_pause import gc_paused
from libra.benchmark.vqa_accuracy import PROCESSORS, VQAResult, evaluate_vqa


def score_vqa_files(
    questions: str, annotations: str, results: str, processor: str = "official", n: int = 2
) -> VQAResult:
    """Read official VQA files and score them. The garbage collector stays paused until the
    parsed files are freed again, so it never rescans them (the data has no reference cycles)."""
    with gc_paused():
        anns = load_vqa_annotations(annotations)
        check_questions_cover(load_vqa_questions(questions), anns, questions)
        try:
            result = evaluate_vqa(anns, load_vqa_results(results, anns), processor=processor, n=n)
        except (KeyError, TypeError, AttributeError):
            check_vqa_answers(anns, annotations)  # names the malformed answer when there is one
            raise
        del anns  # freed while the collector is still paused
    return result


def score_caption_files(
    gt: str, results: str, metrics: Sequence[str] = METRICS, tokenizer: str = "python"
) -> CaptionResult:
    """Read caption ground truth (COCO or Karpathy layout) and results, and score them."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise InputError(f"--metrics: unknown {unknown}; choose from {','.join(METRICS)}")
    with gc_paused():
        references = load_caption_references(gt)
        candidates = load_caption_results(results, references)
        result = score_captions(references, candidates, metrics=metrics, tokenizer=tokenizer)
        del references, candidates  # freed while the collector is still paused
    return result


def _vqa(args: argparse.Namespace) -> dict:
    return score_vqa_files(args.questions, args.annotations, args.results, args.processor, args.n).to_json()


def _caption(args: argparse.Namespace) -> dict:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    return score_caption_files(args.gt, args.results, metrics, args.tokenizer).to_json()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m libra.benchmark.score", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="task", required=True)
    vqa = sub.add_parser("vqa", help="VQA accuracy on official files")
    vqa.add_argument("--questions", required=True)
    vqa.add_argument("--annotations", required=True)
    vqa.add_argument("--results", required=True)
    vqa.add_argument(
        "--processor", default="official", choices=sorted(PROCESSORS) + sorted(EXACT_MATCH_RULES)
    )
    vqa.add_argument("--n", type=int, default=2, help="decimals of the rounded scores (official: 2)")
    vqa.set_defaults(run=_vqa)
    cap = sub.add_parser("caption", help="COCO caption metrics (pycocoevalcap semantics)")
    cap.add_argument("--gt", required=True, help="COCO-format or Karpathy-layout ground truth")
    cap.add_argument("--results", required=True)
    cap.add_argument("--metrics", default=",".join(METRICS))
    cap.add_argument("--tokenizer", default="python", choices=["python", "java"])
    cap.set_defaults(run=_caption)
    return parser


def score_cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    for note in result.get("notes", {}).values():
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(score_cli())
