"""`python run.py task=serve ...` as a user starts it: a subprocess on a free loopback port, the API key
from the environment, answered through the official `openai` client, stopped with Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from launch_env import child_environ, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_run_py_task_serve_answers_the_openai_client(tiny_export, tmp_path):
    port = free_port()
    env = child_environ(LIBRA_SERVE_API_KEY="from-env", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        str(ROOT / "run.py"),
        "task=serve",
        f"checkpoint={tiny_export}",
        f"serve.port={port}",
        "max_new_tokens=6",
        "logger=none",
    ]
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "task=serve did not come up: " + log.read_text()[-4000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)

        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="from-env", max_retries=0, timeout=60
        )
        assert [m.id for m in client.models.list().data] == ["libra"]
        reply = client.chat.completions.create(model="libra", messages=[{"role": "user", "content": "hi"}])
        assert reply.usage.completion_tokens <= 6  # max_new_tokens is the default budget
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="guess", max_retries=0
            ).models.list()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    text = log.read_text()
    assert process.returncode == 0, text[-4000:]
    assert "[serve] libra: OpenAI API on http://127.0.0.1:" in text and "API key required" in text
    assert "[serve] batch of 1 request(s)" in text
    assert "from-env" not in text  # the key from the environment is never printed
