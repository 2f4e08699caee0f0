"""The environment for a `python run.py` (or torchrun) that a test starts.

In-process trainings set launcher variables in the test process (a one-process group needs them),
some from module-scoped fixtures. A child must not inherit them: it would take itself for a rank of
an outside launcher and reuse this process's rendezvous port.
"""

import os
import socket

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_environ(**extra: str) -> dict[str, str]:
    """os.environ without launcher variables or a W&B API key, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and k != "WANDB_API_KEY"}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server or a rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
