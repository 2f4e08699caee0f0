"""The metric modules import neither torch nor anything of libra outside libra.benchmark.

``libra/__init__.py`` imports the Python API (torch), so the check stands a bare ``libra`` package in
for it: what is measured is what the metric modules themselves pull in."""

import subprocess
import sys

from bench_corpus import ROOT

METRIC_MODULES = [
    "vqa_answers", "vqa_accuracy", "exact_match", "ptb_tokenizer", "java", "ngram_table", "bleu",
    "rouge", "cider", "meteor", "spice", "caption_metrics", "files", "score", "pope",
]  # fmt: skip


def test_metric_modules_do_not_import_torch():
    imports = "; ".join(f"import libra.benchmark.{m}" for m in METRIC_MODULES)
    bare_package = "import sys, types; libra = types.ModuleType('libra'); libra.__path__ = ['libra']; "
    bare_package += "sys.modules['libra'] = libra"
    code = (
        f"{bare_package}; {imports}; "
        "bad = sorted(m for m in sys.modules if m == 'torch' "
        "or (m.startswith('libra.') and not m.startswith('libra.benchmark'))); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
