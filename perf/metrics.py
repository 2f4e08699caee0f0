"""Speed of libra's benchmark metrics against the reference tools, measured in the same run.

    python perf/metrics.py                      # 5,000 images, 100,000 questions
    python perf/metrics.py --images 500 --questions 10000 --repeats 1   # quick look

Captioning: 5,000 distinct images with seeded, generated captions (5 references + 1 candidate
each, every string distinct, so no cache can flatter the figure), scored with BLEU-1..4, ROUGE-L
and CIDEr-D (no METEOR: it is the same jar on both sides) by pycocoevalcap 1.2 (Java PTB
tokenizer) and by libra (pure-Python PTB emulation). VQA: 100,000 distinct generated questions
scored by a faithful port of the official GT-Vision-Lab/VQA code (below, kept apart from libra's
code) and by libra. Both timed spans include reading the JSON files and tokenising. The script
prints each time, the speed-up, and the largest difference between the two sides' numbers; it
exits non-zero when they differ by more than 1e-9.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libra.benchmark.score import score_caption_files, score_vqa_files  # noqa: E402
from libra.benchmark.vqa_answers import ARTICLES, CONTRACTIONS, NUMBER_WORDS  # noqa: E402

# ------------------------------------------------------------------------------ data generation

COUNTS = ["a", "one", "two", "three", "four", "5", "6", "several", "some", "a pair of", "a group of"]
ADJECTIVES = [
    "red", "small", "old", "wooden", "shiny", "muddy", "tall", "striped", "tiny", "green", "rusty",
    "bright", "dark", "fluffy", "broken", "empty", "crowded", "quiet", "wet", "sunny",
]  # fmt: skip
NOUNS = [
    "dog", "cat", "man", "woman", "bus", "train", "boat", "bird", "horse", "clock", "pizza",
    "bench", "kite", "surfer", "skateboard", "giraffe", "elephant", "table", "bicycle", "truck",
]  # fmt: skip
VERBS = ["sitting on", "standing near", "walking along", "parked by", "lying on", "next to",
         "riding", "looking at", "jumping over", "resting beside"]  # fmt: skip
PLACES = ["a street", "the beach", "a field", "a kitchen", "the park", "a river", "a table", "the snow",
          "a city", "the water", "a building", "a sidewalk", "the grass", "a road", "a station"]  # fmt: skip
EXTRAS = ["", "", " at night", " in the rain", " on a sunny day", ", with a tree behind it",
          " while people watch", " in the background"]  # fmt: skip


def _caption(rng: random.Random, n: int) -> str:
    adjs = " ".join(rng.sample(ADJECTIVES, rng.randint(0, 2)))
    text = f"{rng.choice(COUNTS)} {adjs} {rng.choice(NOUNS)} {rng.choice(VERBS)} {rng.choice(PLACES)}"
    text = " ".join(text.split()) + rng.choice(EXTRAS) + f" number {n}"  # the number keeps it distinct
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + rng.choice(["", ".", ".", " ."])


def make_captions(folder: Path, images: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    counter = iter(range(10**9))
    gt = {"images": [], "annotations": []}
    results = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id})
        for _ in range(5):
            gt["annotations"].append(
                {"image_id": image_id, "id": next(counter), "caption": _caption(rng, next(counter))}
            )
        results.append({"image_id": image_id, "caption": _caption(rng, next(counter))})
    captions = [a["caption"] for a in gt["annotations"]] + [r["caption"] for r in results]
    assert len(set(captions)) == len(captions), "generated captions must be distinct"
    (folder / "captions_gt.json").write_text(json.dumps(gt))
    (folder / "captions_results.json").write_text(json.dumps(results))
    return folder / "captions_gt.json", folder / "captions_results.json"


QUESTION_TYPES = [("what color is", "other"), ("how many", "number"), ("is the", "yes/no"),
                  ("what is the", "other"), ("are there", "yes/no"), ("what sport is", "other")]  # fmt: skip
ANSWERS = {
    "other": [
        "red",
        "blue",
        "t-shirt",
        "a dog",
        "the man",
        "tennis",
        "st. louis",
        "a/c",
        "cant tell",
        "pizza",
    ],
    "number": ["2", "two", "3", "three", "1,000", "10", "none", "4", "five", "0"],
    "yes/no": ["yes", "no", "Yes", "no.", "yes!", "nope"],
}


def _variant(rng: random.Random, answer: str) -> str:
    r = rng.random()
    if r < 0.1:
        return answer.capitalize()
    if r < 0.15:
        return answer + "."
    if r < 0.18:
        return " " + answer + "\n"
    return answer


def make_vqa(folder: Path, questions: int, seed: int) -> tuple[Path, Path, Path]:
    rng = random.Random(seed)
    header = {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": "perf",
        "license": {},
    }
    qs, anns, results = [], [], []
    for qid in range(questions):
        qtype, atype = rng.choice(QUESTION_TYPES)
        pool = rng.sample(ANSWERS[atype], 3)
        weights = [rng.random() for _ in pool]
        humans = [_variant(rng, a) for a in rng.choices(pool, weights, k=10)]
        if rng.random() < 0.2:
            humans = [pool[0]] * 10  # unanimous: the official code skips normalisation
        qs.append({"question_id": qid, "image_id": qid // 3, "question": f"{qtype} it?"})
        answers = [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(humans)
        ]
        anns.append({
            "question_id": qid, "image_id": qid // 3, "question_type": qtype, "answer_type": atype,
            "multiple_choice_answer": humans[0], "answers": answers,
        })  # fmt: skip
        results.append({"question_id": qid, "answer": _variant(rng, rng.choice(ANSWERS[atype]))})
    paths = folder / "vqa_questions.json", folder / "vqa_annotations.json", folder / "vqa_results.json"
    paths[0].write_text(json.dumps({**header, "questions": qs}))
    paths[1].write_text(json.dumps({**header, "annotations": anns}))
    paths[2].write_text(json.dumps(results))
    return paths


# ------------------------------------------------- baseline: the official VQA code, ported faithfully
# Same data flow and per-question work as GT-Vision-Lab/VQA vqa.py + vqaEval.py (index, deep-copied
# results, in-place answer rewriting, list comprehensions over answer dicts); Python 3 only.


def _load(path: Path):
    with open(path) as f:
        return json.load(f)


class OfficialVQA:
    PUNCT = [
        ";",
        "/",
        "[",
        "]",
        '"',
        "{",
        "}",
        "(",
        ")",
        "=",
        "+",
        "\\",
        "_",
        "-",
        ">",
        "<",
        "@",
        "`",
        ",",
        "?",
        "!",
    ]
    PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
    COMMA_STRIP = re.compile(r"(\d)(,)(\d)")

    def __init__(self, annotation_file: Path, question_file: Path):
        self.dataset = _load(annotation_file)
        self.questions = _load(question_file)
        self.qa = {ann["question_id"]: ann for ann in self.dataset["annotations"]}
        self.qqa = {q["question_id"]: q for q in self.questions["questions"]}

    def load_results(self, result_file: Path, question_file: Path) -> dict:
        questions = _load(question_file)
        results = _load(result_file)
        assert {r["question_id"] for r in results} == set(self.qa), "results must cover every question"
        out = {}
        for r in results:
            ann = copy.deepcopy(r)
            ann["image_id"] = self.qa[r["question_id"]]["image_id"]
            out[r["question_id"]] = ann
        self.res_header = {
            k: copy.deepcopy(questions[k]) for k in ("info", "task_type", "data_type", "license")
        }
        return out

    def process_punctuation(self, text: str) -> str:
        out = text
        for p in self.PUNCT:
            if (p + " " in text or " " + p in text) or re.search(self.COMMA_STRIP, text) is not None:
                out = out.replace(p, "")
            else:
                out = out.replace(p, " ")
        return self.PERIOD_STRIP.sub("", out, re.UNICODE)

    MANUAL_MAP = dict(NUMBER_WORDS)  # the word lists are facts; copied so setdefault grows ours only
    ARTICLES = list(ARTICLES)
    CONTRACTIONS = dict(CONTRACTIONS)

    def process_digit_article(self, text: str) -> str:
        words = []
        for word in text.lower().split():
            word = self.MANUAL_MAP.setdefault(word, word)
            if word not in self.ARTICLES:
                words.append(word)
        for i, word in enumerate(words):
            if word in self.CONTRACTIONS:
                words[i] = self.CONTRACTIONS[word]
        return " ".join(words)

    def evaluate(self, res: dict) -> tuple[float, dict]:
        accs, per_question = [], {}
        for qid in [ann["question_id"] for ann in self.dataset["annotations"]]:
            gts = self.qa[qid]["answers"]
            for ans in gts:
                ans["answer"] = ans["answer"].replace("\n", " ").replace("\t", " ").strip()
            pred = res[qid]["answer"].replace("\n", " ").replace("\t", " ").strip()
            if len({a["answer"] for a in gts}) > 1:
                for ans in gts:
                    ans["answer"] = self.process_digit_article(self.process_punctuation(ans["answer"]))
                pred = self.process_digit_article(self.process_punctuation(pred))
            gt_acc = []
            for held_out in gts:
                others = [item for item in gts if item != held_out]
                matching = [item for item in others if item["answer"] == pred]
                gt_acc.append(min(1, float(len(matching)) / 3))
            acc = float(sum(gt_acc)) / len(gt_acc)
            accs.append(acc)
            per_question[qid] = acc
        return round(100 * float(sum(accs)) / len(accs), 2), per_question


# ------------------------------------------------------------------------------------ runs


def time_vqa(paths: tuple[Path, Path, Path]) -> dict:
    questions, annotations, results = paths
    start = time.perf_counter()
    official = OfficialVQA(annotations, questions)
    overall_ref, per_ref = official.evaluate(official.load_results(results, questions))
    baseline_s = time.perf_counter() - start

    start = time.perf_counter()
    ours = score_vqa_files(str(questions), str(annotations), str(results))  # what the CLI runs
    ours_s = time.perf_counter() - start
    diff = max(abs(per_ref[q] - ours.per_question[q]) for q in per_ref)
    assert ours.overall == overall_ref, (ours.overall, overall_ref)
    return {"baseline_s": baseline_s, "ours_s": ours_s, "overall": ours.overall, "max_abs_diff": diff}


def time_captions(gt_path: Path, results_path: Path) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    start = time.perf_counter()
    gt = _load(gt_path)
    gts = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        gts[ann["image_id"]].append({"caption": ann["caption"]})
    res = {r["image_id"]: [{"caption": r["caption"]}] for r in _load(results_path)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    reference = {}
    for scorer, names in (
        (Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]),
        (Rouge(), ["ROUGE_L"]),
        (Cider(), ["CIDEr"]),
    ):
        score, scores = scorer.compute_score(gts, res)
        if len(names) == 1:
            score, scores = [score], [scores]
        for name, corpus, per_image in zip(names, score, scores):
            reference[name] = (corpus, dict(zip(gts, per_image)))
    baseline_s = time.perf_counter() - start

    start = time.perf_counter()
    ours = score_caption_files(str(gt_path), str(results_path), metrics=("Bleu", "ROUGE_L", "CIDEr"))
    ours_s = time.perf_counter() - start
    diff = 0.0
    for name, (corpus, per_image) in reference.items():
        diff = max(diff, abs(corpus - ours.overall[name]))
        diff = max(diff, max(abs(v - ours.per_image[i][name]) for i, v in per_image.items()))
    return {"baseline_s": baseline_s, "ours_s": ours_s, "CIDEr": ours.overall["CIDEr"], "max_abs_diff": diff}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side; the best time is kept")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = {
            "caption": (
                time_captions,
                make_captions(folder, args.images, args.seed),
                f"{args.images} images",
            ),
            "vqa": (time_vqa, (make_vqa(folder, args.questions, args.seed),), f"{args.questions} questions"),
        }
        for name, (fn, fn_args, size) in runs.items():
            results = [fn(*fn_args) for _ in range(args.repeats)]
            base = min(r["baseline_s"] for r in results)
            ours = min(r["ours_s"] for r in results)
            diff = max(r["max_abs_diff"] for r in results)
            ok &= diff <= 1e-9
            extra = {k: v for k, v in results[0].items() if k not in ("baseline_s", "ours_s", "max_abs_diff")}
            print(
                f"{name:8s} {size:>18s}: reference {base:7.2f} s   libra {ours:6.2f} s   "
                f"speed-up {base / ours:5.1f}x   max |diff| {diff:.1e}   {extra}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
