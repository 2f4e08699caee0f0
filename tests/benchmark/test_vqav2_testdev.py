"""benchmark=vqav2_testdev writes the EvalAI submission: a JSON list of {"question_id": int,
"answer": str} over every test2015 question (the test-dev ones answered, normalised as for val; the
others ""), and scores nothing, since no answers are public."""

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tiny_bench import CONF, make_cfg

from libra.benchmark.files import InputError
from libra.benchmark.vqa_answers import normalize_evalai

HEADER = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}}


def _questions(path: Path, subtype: str, questions: list[tuple[int, int, str]]) -> None:
    entries = [{"question_id": q, "image_id": i, "question": text} for q, i, text in questions]
    path.write_text(json.dumps({**HEADER, "data_subtype": subtype, "questions": entries}))


def _test_data(root: Path, cache: Path) -> Path:
    """VQAv2 test-layout files: 3 test-dev questions on 2 images, test2015 = those + 2 more."""
    from tiny_bench import SYNTHETIC

    from libra.data.synthetic import synthetic_dataset

    synthetic = sorted((synthetic_dataset(cache, **SYNTHETIC).image_root / "test").iterdir())
    (root / "vqav2").mkdir(parents=True)
    images = root / "coco" / "test2015"
    images.mkdir(parents=True)
    for image_id, source in ((1, synthetic[0]), (2, synthetic[1])):  # the file name, not the format, counts
        shutil.copy(source, images / f"COCO_test2015_{image_id:012d}.jpg")
    dev = [
        (1000, 1, "what shape is shown?"),
        (1001, 1, "what color is the background?"),
        (2000, 2, "how many?"),
    ]
    more = [(2001, 2, "is there a red square?"), (3000, 3, "what color is the circle?")]
    _questions(root / "vqav2" / "v2_OpenEnded_mscoco_test-dev2015_questions.json", "test-dev2015", dev)
    _questions(
        root / "vqav2" / "v2_OpenEnded_mscoco_test2015_questions.json", "test2015", dev[:2] + more + dev[2:]
    )
    return root


def _testdev_cfg(tiny_checkpoint, tmp_path, monkeypatch):
    checkpoint, cache = tiny_checkpoint
    monkeypatch.setenv("LIBRA_DATA_DIR", str(_test_data(tmp_path / "data", cache)))
    cfg = make_cfg(checkpoint, cache, tmp_path / "run", logger="none")
    cfg.benchmark = OmegaConf.load(CONF / "benchmark" / "vqav2_testdev.yaml")
    cfg.benchmark.vqav2_testdev.decoding.max_new_tokens = 4
    return cfg


@pytest.mark.slow
def test_testdev_writes_the_evalai_submission_and_scores_nothing(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    from libra.benchmark.runner import evaluate
    from libra.train.baselines import baseline_table

    cfg = _testdev_cfg(tiny_checkpoint, tmp_path, monkeypatch)
    assert evaluate(cfg) == {}  # nothing to score
    out = tmp_path / "run" / "vqav2_testdev"
    assert not (out / "metrics.json").exists()
    assert "no answers to score against" in capsys.readouterr().out
    submission = json.loads((out / "predictions.json").read_text())
    # the EvalAI format: a list of exactly {"question_id": int, "answer": str}, every test2015 id once
    assert isinstance(submission, list)
    assert all(set(r) == {"question_id", "answer"} for r in submission)
    assert all(type(r["question_id"]) is int and isinstance(r["answer"], str) for r in submission)
    assert [r["question_id"] for r in submission] == [1000, 1001, 2001, 3000, 2000]  # test2015 order
    records = [json.loads(line) for line in (out / "predictions.rank0.jsonl").read_text().splitlines()]
    raw = {r["id"]: r["prediction"] for r in records}
    assert sorted(raw) == [1000, 1001, 2000]  # only test-dev was asked
    answers = {r["question_id"]: r["answer"] for r in submission}
    assert answers[2001] == answers[3000] == ""
    assert all(answers[q] == normalize_evalai(raw[q]) for q in raw)
    lines = baseline_table(cfg.benchmark, {})[1]
    assert any(line.startswith("  (no majority baseline for vqav2_testdev") for line in lines)


def test_submission_file_must_cover_the_asked_questions(tiny_checkpoint, tmp_path, monkeypatch):
    from hydra.utils import instantiate

    cfg = _testdev_cfg(tiny_checkpoint, tmp_path, monkeypatch)
    cfg.benchmark.vqav2_testdev.submission_questions_file = str(tmp_path / "short.json")
    _questions(tmp_path / "short.json", "test2015", [(1000, 1, "q")])
    task = instantiate(cfg.benchmark.vqav2_testdev)
    predictions = {item.id: "Yes" for item in task.items()}
    with pytest.raises(InputError, match="short.json: lacks 2 asked question"):
        task.predictions_json(predictions)
    task.submission_questions_file = None  # the test-dev questions alone
    assert task.predictions_json(predictions) == [
        {"question_id": q, "answer": "yes"} for q in (1000, 1001, 2000)
    ]
