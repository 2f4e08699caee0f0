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

from libra.benchmark.caption_metrics import METRICS, score_captions
from libra.benchmark.exact_match import EXACT_MATCH_RULES
from libra.benchmark.files import (
    InputError,
    check_questions_cover,
    load_caption_references,
    load_caption_results,
    load_vqa_annotations,
    load_vqa_questions,
    load_vqa_results,
)
from libra.benchmark.vqa_accuracy import PROCESSORS, evaluate_vqa


def _vqa(args: argparse.Namespace) -> dict:
    annotations = load_vqa_annotations(args.annotations)
    questions = load_vqa_questions(args.questions)
    check_questions_cover(questions, annotations, args.questions)
    predictions = load_vqa_results(args.results, annotations)
    return evaluate_vqa(annotations, predictions, processor=args.processor, n=args.n).to_json()


def _caption(args: argparse.Namespace) -> dict:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise InputError(f"--metrics: unknown {unknown}; choose from {','.join(METRICS)}")
    references = load_caption_references(args.gt)
    candidates = load_caption_results(args.results, references)
    return score_captions(references, candidates, metrics=metrics, tokenizer=args.tokenizer).to_json()


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


def main(argv: list[str] | None = None) -> int:
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
    sys.exit(main())
