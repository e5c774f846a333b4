"""`trainer.devices=N` (N > 1): start N processes of this same command with torchrun."""

import os
import subprocess
import sys


def maybe_launch(argv: list[str]) -> None:
    devices = next((a.split("=", 1)[1] for a in argv if a.startswith("trainer.devices=")), "1")
    if "LOCAL_RANK" in os.environ or "-m" in argv or "--multirun" in argv:
        return
    try:
        n = int(devices)
    except ValueError:
        sys.exit(f"bigmodel: trainer.devices={devices!r} is not an integer")
    if n <= 1:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "bigmodel", "train", *argv]
    sys.exit(subprocess.call(cmd))
