"""perf/ holds scripts, not an installed package: make `import perf.<module>` find the checkout's."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
