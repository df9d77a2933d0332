"""The memory-probe children ``measure.peak_memories`` starts die with their parent (Linux PR_SET_PDEATHSIG)."""
import os
import signal
import subprocess
import sys
import time

import pytest

PARENT = ("import subprocess, sys\n"
          "from cnncompress.measure import _die_with_parent\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
          " preexec_fn=_die_with_parent())\n"
          "print(child.pid, flush=True)\n"
          "child.wait()\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie awaiting its reaper counts as gone
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_probe_dies_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
