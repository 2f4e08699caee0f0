"""The metric modules import neither torch nor anything of libra outside libra.benchmark."""

import subprocess
import sys

from bench_corpus import ROOT

METRIC_MODULES = [
    "vqa_answers", "vqa_accuracy", "exact_match", "ptb_tokenizer", "java", "ngram_table", "bleu",
    "rouge", "cider", "meteor", "spice", "caption_metrics", "files", "score", "pope",
]  # fmt: skip


def test_metric_modules_do_not_import_torch():
    imports = "; ".join(f"import libra.benchmark.{m}" for m in METRIC_MODULES)
    code = (
        f"import sys; {imports}; "
        "bad = sorted(m for m in sys.modules if m == 'torch' "
        "or (m.startswith('libra.') and not m.startswith('libra.benchmark'))); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
