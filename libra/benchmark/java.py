"""Finding Java and the jars shipped inside the pycocoevalcap package, and running them with
UTF-8 forced (``-Dfile.encoding=UTF-8`` and a UTF-8 locale), whatever the caller's locale.

Pure Python; imports nothing of libra and does not import pycocoevalcap itself.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path


class JavaUnavailable(RuntimeError):
    """Java or a jar is missing; callers skip the metric with this message as the note."""


def java_executable() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaUnavailable("no `java` on PATH (install a JRE >= 8, e.g. apt-get install default-jre)")
    return java


def pycocoevalcap_dir() -> Path:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise JavaUnavailable("pycocoevalcap is not installed (pip install pycocoevalcap==1.2)")
    return Path(list(spec.submodule_search_locations)[0])


def pycocoevalcap_file(relative: str) -> Path:
    path = pycocoevalcap_dir() / relative
    if not path.exists():
        raise JavaUnavailable(f"{path} is missing from the pycocoevalcap package")
    return path


def java_command(args: list[str], max_heap: str | None = None) -> list[str]:
    """``java -Dfile.encoding=UTF-8 [-Xmx..] args``."""
    heap = [f"-Xmx{max_heap}"] if max_heap else []
    return [java_executable(), "-Dfile.encoding=UTF-8", *heap, *args]


def utf8_environment() -> dict[str, str]:
    """The caller's environment with a UTF-8 locale, so Java reads and writes UTF-8 pipes."""
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    return env
