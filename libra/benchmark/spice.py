"""SPICE through ``spice-1.0.jar`` in pycocoevalcap, when its Stanford CoreNLP 3.6.0 jars are
present. pycocoevalcap downloads them on first use; offline (and in the pip wheel) they are
absent, and then ``spice`` raises ``JavaUnavailable`` with the reason so the caller skips SPICE
with a note instead of failing the whole evaluation. Java runs with UTF-8 forced.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from libra.benchmark.java import JavaUnavailable, java_command, pycocoevalcap_file, utf8_environment

CORENLP_JARS = ("spice/lib/stanford-corenlp-3.6.0.jar", "spice/lib/stanford-corenlp-3.6.0-models.jar")


def spice(
    image_ids: Sequence[Any], candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[float, list[float]]:
    """Corpus SPICE (mean of per-image ``All.f``) and per-image SPICE."""
    jar = pycocoevalcap_file("spice/spice-1.0.jar")
    for relative in CORENLP_JARS:
        try:
            pycocoevalcap_file(relative)
        except JavaUnavailable as err:
            raise JavaUnavailable(
                f"{err}; SPICE needs Stanford CoreNLP 3.6.0 (run pycocoevalcap's "
                "spice/get_stanford_models.py once with network access)"
            ) from err
    rows = [{"image_id": i, "test": c, "refs": list(r)} for i, c, r in zip(image_ids, candidates, references)]
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        inp.write_text(json.dumps(rows), encoding="utf-8")
        cmd = java_command(
            ["-jar", str(jar), str(inp), "-cache", str(Path(tmp) / "cache"), "-out", str(out)]
            + ["-subset", "-silent"],
            max_heap="8G",
        )
        subprocess.run(cmd, cwd=jar.parent, check=True, env=utf8_environment(), capture_output=True)
        results = {str(r["image_id"]): r for r in json.loads(out.read_text(encoding="utf-8"))}
    per_image = []
    for i in image_ids:
        f = results[str(i)]["scores"]["All"]["f"]
        per_image.append(math.nan if f is None else float(f))
    return sum(per_image) / len(per_image), per_image
