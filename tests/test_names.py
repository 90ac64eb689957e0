"""Awkward names and files: each pushed correctly or skipped with a warning naming it,
and the rest of the folder still pushed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import unicodedata

import pytest

from conftest import Setup, json_events, manifest_files


def test_awkward_names_round_trip_and_unpushable_ones_are_named(setup: Setup) -> None:
    """Newlines, NFC/NFD twins and 255-byte names round-trip; the rest is skipped with a reason."""
    f = setup.folder
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    assert nfc != nfd
    good = {
        "line\nbreak.txt": b"newline in the name",
        nfc: b"composed",
        nfd: b"decomposed",
        "x" * 251 + ".txt": b"a 255-byte name",
        "tab\tand space .txt": b"tab",
        "normal.txt": b"the rest of the folder",
    }
    for name, data in good.items():
        (f / name).write_bytes(data)
    deep = f / "/".join(["d" * 200] * 5)  # a path over S3's 1,024-byte key limit
    deep.mkdir(parents=True)
    (deep / "too-long.txt").write_text("cannot be an S3 key")
    os.mkfifo(f / "a-fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(f / "a-socket"))
    os.symlink("loop", f / "loop")
    os.symlink(f / "loop2", f / "loop2")
    with open(os.path.join(os.fsencode(f), b"latin1-\xe9.txt"), "wb") as out:
        out.write(b"not utf-8")
    try:
        proc = setup.cli("push")
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr
    top = proc.stdout.split()[1]
    assert manifest_files(setup, top) == good
    skipped = {e["path"]: e["reason"] for e in json_events(proc.stderr) if e.get("event") == "scan.skipped"}
    reasons = {os.path.basename(p): r for p, r in skipped.items()}
    assert "FIFO" in reasons["a-fifo"] and "FIFO" in reasons["a-socket"]
    assert "cannot stat" in reasons["loop"] and "cannot stat" in reasons["loop2"]
    assert "longer than S3 allows" in reasons["too-long.txt"]
    assert any("UTF-8" in r for r in reasons.values())
    # and they restore under the same names
    dest = setup.root / "out"
    setup.cli("restore", setup.package, "--top-hash", top, "--dest", str(dest), check=True)
    for name, data in good.items():
        assert (dest / name).read_bytes() == data


def _without_dac() -> list[str] | None:
    """Run as root but bound by file permissions (no CAP_DAC_*), as an unprivileged user is."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


@pytest.mark.skipif(_without_dac() is None, reason="needs root and setpriv to drop the DAC capabilities")
def test_permission_denied_files_and_directories_are_skipped_and_named(setup: Setup) -> None:
    """An unreadable file and an unreadable directory are skipped with warnings; the rest is pushed."""
    f = setup.folder
    (f / "readable.txt").write_text("fine")
    (f / "secret.txt").write_text("no access")
    (f / "secret.txt").chmod(0)
    (f / "locked").mkdir()
    (f / "locked" / "inside.txt").write_text("behind a locked dir")
    (f / "open").mkdir()
    (f / "open" / "ok.txt").write_text("ok")
    (f / "locked").chmod(0)
    try:
        proc = subprocess.run([*_without_dac(), sys.executable, "-m", "quiltsync", "--config",
                               str(setup.config_path), "push"], capture_output=True, text=True, timeout=120)
    finally:
        (f / "locked").chmod(0o755)
        (f / "secret.txt").chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    top = proc.stdout.split()[1]
    assert manifest_files(setup, top) == {"readable.txt": b"fine", "open/ok.txt": b"ok"}
    skipped = {os.path.basename(e["path"]): e["reason"] for e in json_events(proc.stderr)
               if e.get("event") == "scan.skipped"}
    assert "permission denied" in skipped["secret.txt"].lower()
    assert "unreadable directory" in skipped["locked"]
