"""`bigmodel serve` as a user runs it, in a subprocess: SIGTERM lets the request in flight finish, then
the server exits 0; start-up errors (a bad checkpoint, a port in use) are one line and a non-zero exit."""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import run_cli
from test_serve import ckpts  # noqa: F401 (ckpts is a fixture)

pytestmark = pytest.mark.slow


class Server:
    """`python -m bigmodel serve ...` with its output read line by line in a thread."""

    def __init__(self, cwd, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "BIGMODEL_LOG_DIR": str(cwd / "logs")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bigmodel", "serve", "port=0", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def url(self, timeout: float = 120) -> str:
        """The address the server logs once it listens."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.output)
                continue
            self.output.append(line)
            if " on http://" in line:
                return line.split(" on ")[1].split()[0]
        raise AssertionError("the server did not start: " + "".join(self.output))

    def finish(self, timeout: float = 60) -> str:
        self.proc.wait(timeout)
        time.sleep(0.2)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "".join(self.output)


def test_sigterm_finishes_the_request_in_flight_then_exits_0(ckpts, tmp_path):
    server = Server(tmp_path, f"ckpt_path={ckpts['gpt']}")
    try:
        url = server.url()
        answer = {}

        def client() -> None:  # a generation of 1,024 tokens: in flight for a while
            request = {"prompt": "a", "max_new_tokens": 1024, "seed": 3}
            answer["r"] = httpx.post(f"{url}/v1/generate", json=request, timeout=120)
            answer["at"] = time.monotonic()

        thread = threading.Thread(target=client)
        thread.start()
        end = time.monotonic() + 30
        while httpx.get(f"{url}/v1/stats").json()["generate"] < 1 and time.monotonic() < end:
            time.sleep(0.02)
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        thread.join(120)
        output = server.finish()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert answer["at"] > sent  # the request was in flight when the signal came ...
    assert answer["r"].status_code == 200 and len(answer["r"].json()["text"]) == 1024  # ... and finished whole
    assert server.proc.returncode == 0, output
    assert "Traceback" not in output and "stopped" in output


def test_a_bad_checkpoint_is_one_line_and_a_non_zero_exit(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = run_cli("serve", f"ckpt_path={tmp_path / 'junk.pt'}", "port=0", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "junk.pt" in output.strip().splitlines()[-1]


def test_a_port_in_use_is_one_line_and_a_non_zero_exit(ckpts, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", f"ckpt_path={ckpts['cnn']}", f"port={port}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert f"port={port}" in output.strip().splitlines()[-1] and "in use" in output
