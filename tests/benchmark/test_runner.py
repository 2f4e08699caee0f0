"""End to end: ``evaluate(cfg)`` on the synthetic VQA and caption tasks with a tiny checkpoint built
here writes predictions, metrics and a W&B offline table; interrupted and rerun, it resumes."""

import json
from pathlib import Path

import pytest
from tiny_bench import make_cfg

from libra.benchmark import runner as runner_module
from libra.benchmark.runner import evaluate


@pytest.mark.slow
def test_evaluate_writes_predictions_metrics_and_resumes(tiny_checkpoint, tmp_path, monkeypatch):
    checkpoint, cache = tiny_checkpoint
    cfg = make_cfg(checkpoint, cache, tmp_path / "run")

    # Interrupt after the first VQA batch: the partial predictions stay on disk.
    real_generate, calls = runner_module._generate, []

    def crash_after_one_batch(task, model, processor, batch):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(batch))
        return real_generate(task, model, processor, batch)

    monkeypatch.setattr(runner_module, "_generate", crash_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg)
    partial = (tmp_path / "run" / "synthetic_vqa" / "predictions.rank0.jsonl").read_text().splitlines()
    assert len(partial) == 4

    generated = []

    def counting(task, model, processor, batch):
        generated.extend(item.id for item in batch)
        return real_generate(task, model, processor, batch)

    monkeypatch.setattr(runner_module, "_generate", counting)
    scores = evaluate(cfg)
    first_ids = {json.loads(line)["id"] for line in partial}
    assert not first_ids & set(generated) and len(generated) == (10 - 4) + 6  # resumed, nothing redone

    vqa_dir, cap_dir = tmp_path / "run" / "synthetic_vqa", tmp_path / "run" / "synthetic_caption"
    predictions = json.loads((vqa_dir / "predictions.json").read_text())
    assert len(predictions) == 10 and set(predictions[0]) == {"question_id", "answer"}
    metrics = json.loads((vqa_dir / "metrics.json").read_text())
    assert scores["benchmark/synthetic_vqa/accuracy"] == pytest.approx(metrics["unrounded"]["overall"])
    assert 0 <= metrics["overall"] <= 100 and len(metrics["perQuestion"]) == 10
    captions = json.loads((cap_dir / "predictions.json").read_text())
    assert len(captions) == 6 and set(captions[0]) == {"image_id", "caption"}
    cap_metrics = json.loads((cap_dir / "metrics.json").read_text())
    assert scores["benchmark/synthetic_caption/CIDEr"] == pytest.approx(cap_metrics["CIDEr"])
    assert {"Bleu_4", "ROUGE_L", "CIDEr"} <= set(cap_metrics)
    # The offline W&B run holds the sample tables.
    assert list((tmp_path / "run").glob("wandb/offline-run-*/files/media/table/benchmark/*"))

    # Scoring the written files with the CLI logic gives the runner's numbers.
    from libra.benchmark.files import load_vqa_annotations
    from libra.benchmark.vqa_accuracy import evaluate_vqa

    annotations = [
        a
        for a in load_vqa_annotations(next(Path(cache).glob("synthetic-shapes-*/vqa/*test_annotations.json")))
        if a["question_id"] in {p["question_id"] for p in predictions}
    ]
    again = evaluate_vqa(annotations, {p["question_id"]: p["answer"] for p in predictions})
    assert again.overall_unrounded == pytest.approx(metrics["unrounded"]["overall"])
