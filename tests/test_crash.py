"""Crash safety: SIGKILL at a random moment during random edits and pushes, then restart.

Pass criterion per trial: the restarted daemon converges (latest revision == the
folder, byte for byte), every revision made so far still verifies (each entry's
bytes at its pinned version hash to the manifest's hash), and no revision
disappears from the history. CI runs 20 trials; `make soak` runs 200
(QUILTSYNC_SOAK_TRIALS).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from conftest import Setup, write_config
from daemonproc import DaemonProcess
from verify import converged, verify_history

TRIALS = int(os.environ.get("QUILTSYNC_SOAK_TRIALS", "20"))


def _editor(folder, rng: random.Random, stop: threading.Event) -> None:
    while not stop.is_set():
        name = f"d{rng.randrange(3)}/f{rng.randrange(12)}.bin"
        path = folder / name
        action = rng.random()
        if action < 0.15 and path.exists():
            path.unlink()
        else:
            path.parent.mkdir(exist_ok=True)
            size = rng.choice([10, 900, 3000, 70_000])
            path.write_bytes(rng.randbytes(size))
        time.sleep(rng.uniform(0.0, 0.08))


@pytest.mark.timeout(60 * TRIALS + 300)
def test_sigkill_at_random_moments_always_converges_and_loses_no_revision(setup: Setup) -> None:
    """Kill -9 during edits and pushes, restart: converged, every revision verifies, none lost."""
    write_config(setup.config_path, setup.folder, setup.package, setup.registry, setup.endpoint,
                 setup.state_dir, "settle_seconds = 0.2\nmax_delay_seconds = 1.0\nmax_delete_fraction = 1.0\n")
    seed = int(os.environ.get("QUILTSYNC_SOAK_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    verified: dict[str, bool] = {}
    seen: list[str] = []
    kills_during_push = 0
    for trial in range(TRIALS):
        d = DaemonProcess(setup.config_path)
        stop = threading.Event()
        editor = threading.Thread(target=_editor, args=(setup.folder, rng, stop))
        editor.start()
        try:
            time.sleep(rng.uniform(0.3, 3.0))
            in_push = bool(d.of("push.started")) and len(d.of("push.started")) > len(d.of("push.completed"))
            kills_during_push += in_push
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(timeout=30)
        finally:
            stop.set()
            editor.join()
        d = DaemonProcess(setup.config_path)
        try:
            top = converged(setup, timeout=90)
        finally:
            d.stop()
        history = verify_history(setup, verified)
        assert history[: len(seen)] == seen, f"seed {seed} trial {trial}: a revision vanished from history"
        seen = history
        assert history[-1] == top
    print(f"crash trials: {TRIALS}, seed {seed}, kills during a push {kills_during_push}, "
          f"revisions {len(seen)}, all verified, none lost")
