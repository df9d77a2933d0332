"""One run per output folder: a second run is refused naming the holder, ``--wait`` waits, and a holder killed
with SIGKILL leaves nothing that blocks (the kernel drops an flock with its process)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from cnncompress.cli import main
from cnncompress.storage.run_lock import LOCK_NAME, FolderInUse, lock_folder

HOLD = ("import sys, time\n"
        "from cnncompress.storage.run_lock import lock_folder\n"
        "with lock_folder(sys.argv[1], command='holder-test'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(float(sys.argv[2]))\n")


def _holder(folder, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_second_run_is_refused_naming_the_holder_and_a_killed_holder_never_blocks(tmp_path, capsys):
    out = tmp_path / "out"
    holder = _holder(out, 120)
    try:
        with pytest.raises(FolderInUse, match=f"in use by another cnncompress run \\(pid {holder.pid}: holder-test\\)"):
            with lock_folder(out):
                pass
        # through the CLI: exit 2, one line on stderr naming the pid, nothing run
        recipe = tmp_path / "r.yaml"
        recipe.write_text("{}")
        assert main(["bench", "--recipe", str(recipe), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {holder.pid}" in err[0] and "--wait" in err[0]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists()  # the stale file of a kill -9'd run ...
    with lock_folder(out) as lock:  # ... does not block the next run
        assert f"pid {os.getpid()}" in lock.read_text()
    assert not (out / LOCK_NAME).exists()  # a clean exit removes it


def test_wait_blocks_until_the_holder_ends(tmp_path):
    out = tmp_path / "out"
    holder = _holder(out, 1.5)
    lines = []
    started = time.monotonic()
    with lock_folder(out, wait=True, say=lines.append):
        waited = time.monotonic() - started
    assert holder.wait(timeout=60) == 0  # the holder finished its work, then this run got the folder
    assert waited > 0.5 and len(lines) == 1 and f"pid {holder.pid}" in lines[0]


def test_a_refused_run_leaves_no_folder_it_created(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with lock_folder(out):
            raise RuntimeError("bad input found inside the lock")
    assert not out.exists()
