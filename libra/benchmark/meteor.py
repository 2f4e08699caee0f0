"""METEOR 1.5 through the jar shipped inside pycocoevalcap, driven like its ``Meteor`` wrapper.

One JVM (``-stdio -l en -norm``): per image a ``SCORE ||| refs ||| hypothesis`` line returns
sufficient statistics; one ``EVAL ||| stats ...`` line returns the per-image scores and then the
corpus score, which the jar computes from the *summed* statistics (it is not the mean of the
per-image scores). Java runs with UTF-8 forced. Raises ``JavaUnavailable`` when Java or the jar is
missing, so callers can skip the metric with a note.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from libra.benchmark.java import java_command, pycocoevalcap_file, utf8_environment


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """Corpus METEOR and per-image METEOR of tokenised captions."""
    jar = pycocoevalcap_file("meteor/meteor-1.5.jar")
    cmd = java_command(["-jar", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"], max_heap="2G")
    proc = subprocess.Popen(
        cmd,
        cwd=jar.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=utf8_environment(),
    )
    try:
        stats = []
        for hypothesis, refs in zip(candidates, references):
            # The wrapper cleans only the hypothesis of the field separator.
            hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
            stats.append(_ask(proc, " ||| ".join(("SCORE", " ||| ".join(refs), hypothesis))))
        proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
        proc.stdin.flush()
        per_image = [float(proc.stdout.readline().strip()) for _ in stats]
        corpus = float(proc.stdout.readline().strip())
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait()
    return corpus, per_image


def _ask(proc: subprocess.Popen, line: str) -> str:
    proc.stdin.write((line + "\n").encode("utf-8"))
    proc.stdin.flush()
    answer = proc.stdout.readline().decode("utf-8").strip()
    if not answer:
        raise RuntimeError(f"METEOR jar gave no answer to: {line[:200]!r}")
    return answer
