"""quiltsync's own upload path (remote/transfer.py), against a real S3 server.

Two servers: the session's local S3 (moto with S3's SHA-256 checksums) and one
without flexible checksums (``LocalS3(checksums=False)``: no checksum in any
answer, as Ceph RGW 16 behaves, FACTS.md), on which quilt3's own push fails.
The Ceph RGW tests themselves are in test_ceph.py (``make test-s3-ceph``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Setup, manifest_files, write_config
from quiltsync.local import hashing
from quiltsync.remote import settings, transfer
from quiltsync.remote.s3local import LocalS3

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def no_checksums_s3() -> Iterator[LocalS3]:
    with LocalS3(checksums=False) as s3:
        yield s3


@pytest.fixture
def plain_setup(tmp_path: Path, no_checksums_s3: LocalS3) -> Setup:
    """A folder pushed to a versioned bucket on the server without flexible checksums."""
    name = f"qs-plain-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    no_checksums_s3.create_bucket(name, versioning=True)
    root = tmp_path / "plain"
    folder = root / "data"
    folder.mkdir(parents=True)
    s = Setup(root, folder, root / "config.toml", root / "state", "team/plain",
              f"s3://{name}", no_checksums_s3.endpoint_url)
    write_config(s.config_path, folder, s.package, s.registry, s.endpoint, s.state_dir)
    settings.activate(settings.S3Settings(no_checksums_s3.endpoint_url, "us-east-1"))
    return s


def _quilt3_hash(data: bytes) -> str:
    from quilt3 import checksums

    return checksums.calculate_multipart_checksum_bytes(data, checksum_type=checksums.SHA256_CHUNKED_HASH_NAME)


def test_quilt3s_own_push_fails_on_the_server_without_checksums(plain_setup: Setup) -> None:
    """The trap this path exists for: the stand-in server behaves as Ceph RGW 16 does."""
    settings.import_quilt3()  # quilt3's clients are built for the active endpoint
    import quilt3

    (plain_setup.folder / "a.csv").write_text("1,2\n")
    pkg = quilt3.Package().set("a.csv", str(plain_setup.folder / "a.csv"))
    with pytest.raises(KeyError, match="ChecksumSHA256"):
        pkg.push(plain_setup.package, plain_setup.registry, force=True)


@pytest.mark.parametrize("sizes", [[0, 1, 5000], [8 * MIB - 1, 8 * MIB, 8 * MIB + 1, 17 * MIB + 3]])
def test_hashes_equal_quilt3s_for_the_bytes_on_both_servers(setup: Setup, plain_setup: Setup,
                                                           sizes: list[int]) -> None:
    """Single PUTs and multipart uploads (quilt3's part sizes) give quilt3's hash of the
    bytes, the version S3 answered, and the bytes come back from that version."""
    for s in (setup, plain_setup):
        settings.activate(settings.S3Settings(s.endpoint, "us-east-1"))
        files, blobs = [], {}
        for size in sizes:
            p = s.folder / f"f{size}"
            blobs[p.name] = os.urandom(size)
            p.write_bytes(blobs[p.name])
            files.append(transfer.Upload(f"{s.package}/{p.name}", p, size))
        stored = transfer.transfers().upload(lambda: settings.thread_client("upload"), s.registry,
                                             s.registry.removeprefix("s3://"), files)
        c = settings.thread_client("check")
        for f, got in zip(files, stored, strict=True):
            assert got.hash.value == _quilt3_hash(blobs[f.path.name]) and got.hash.type == hashing.CHUNKED
            assert got.version_id not in (None, "null")
            body = c.get_object(Bucket=s.registry.removeprefix("s3://"), Key=f.key, VersionId=got.version_id)
            assert body["Body"].read() == blobs[f.path.name]
    assert transfer.transfers().mode(setup.registry) == transfer.MODE_SHA256
    assert transfer.transfers().mode(plain_setup.registry) == transfer.MODE_MD5


def test_a_push_to_a_server_without_checksums_installs_old_bytes_with_plain_quilt3(
        plain_setup: Setup, tmp_path: Path) -> None:
    """First push, an incremental push with a 20 MiB file, and plain quilt3 browses,
    verifies and installs the old revision with its old bytes."""
    import quilt3

    folder = plain_setup.folder
    (folder / "small.csv").write_text("a,b\n1,2\n")
    (folder / "run" / "raw").mkdir(parents=True)
    (folder / "run" / "raw" / "frame.bin").write_bytes(os.urandom(3000))
    pusher = plain_setup.pusher()
    first = pusher.push()
    assert first.pushed and first.added == 2
    big = os.urandom(20 * MIB)
    (folder / "big.bin").write_bytes(big)
    (folder / "small.csv").write_text("a,b\n3,4\n")
    second = pusher.push()
    assert second.pushed and (second.added, second.modified) == (1, 1)
    assert manifest_files(plain_setup, second.top_hash)["big.bin"] == big
    pkg = quilt3.Package.browse(plain_setup.package, plain_setup.registry, top_hash=second.top_hash)
    assert pkg.verify(str(folder), extra_files_ok=False)
    quilt3.Package.install(plain_setup.package, plain_setup.registry, top_hash=first.top_hash,
                           dest=str(tmp_path / "old"))
    assert (tmp_path / "old" / "small.csv").read_text() == "a,b\n1,2\n"
    assert not (tmp_path / "old" / "big.bin").exists()


def test_check_says_which_checksums_each_server_verifies(setup: Setup, plain_setup: Setup) -> None:
    aws_like = setup.cli("check")
    plain = plain_setup.cli("check")
    assert aws_like.returncode == 0 and plain.returncode == 0, plain.stderr
    row = next(line for line in aws_like.stdout.splitlines() if line.split()[1:2] == ["uploads"])
    assert "verifies S3 SHA-256 checksums" in row
    row = next(line for line in plain.stdout.splitlines() if line.split()[1:2] == ["uploads"])
    assert "no S3 flexible checksums" in row and "Content-MD5" in row
    # the probe leaves nothing behind, not even an old version
    c = settings.thread_client("check")
    listed = c.list_object_versions(Bucket=plain_setup.registry.removeprefix("s3://"), Prefix=".quilt/quiltsync-probe")
    assert not listed.get("Versions") and not listed.get("DeleteMarkers")


def test_a_file_shorter_than_recorded_aborts_its_upload_and_leaves_no_multipart(setup: Setup) -> None:
    """The bytes sent are the bytes hashed: a file that shrank since it was recorded is
    reported as changed (the push aborts) and its multipart upload is aborted."""
    p = setup.folder / "shrinks.bin"
    p.write_bytes(os.urandom(12 * MIB))
    files = [transfer.Upload(f"{setup.package}/shrinks.bin", p, 20 * MIB, name="shrinks.bin")]
    _aborted_leaving_nothing(setup, files, ["shrinks.bin"])


def _aborted_leaving_nothing(setup: Setup, files: list[transfer.Upload], changed: list[str]) -> None:
    """Uploading ``files`` raises SourceChanged naming ``changed``, and leaves no
    multipart upload and no object version behind."""
    from quiltsync.errors import SourceChanged

    bucket = setup.registry.removeprefix("s3://")
    with pytest.raises(SourceChanged) as e:
        transfer.transfers().upload(lambda: settings.thread_client("upload"), setup.registry, bucket, files)
    assert e.value.keys == changed
    c = settings.thread_client("check")
    assert not c.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not c.list_object_versions(Bucket=bucket, Prefix=setup.package).get("Versions")


def test_progress_counts_every_byte_once_and_push_progress_is_logged_for_a_long_upload(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 6 MiB push capped at 2 MiB/s takes about 3 s: push.progress is logged (here at
    most every 0.5 s) with counts that only grow; with a hook (a terminal's bar)
    instead, the hook hears every byte once and nothing is logged."""
    from structlog.testing import capture_logs

    from quiltsync.engine import uploads as uploads_module

    monkeypatch.setattr(uploads_module, "PROGRESS_SECONDS", 0.5)
    transfer.transfers().configure(4, 2 * MIB)
    (setup.folder / "a.bin").write_bytes(os.urandom(4 * MIB))
    (setup.folder / "b.bin").write_bytes(os.urandom(2 * MIB))
    with capture_logs() as logs:
        assert setup.pusher().push().pushed
    events = [e for e in logs if e["event"] == "push.progress"]
    assert len(events) >= 3, [e["event"] for e in logs]
    done = [e["bytes_done"] for e in events]
    assert done == sorted(done) and all(e["bytes_total"] == 6 * MIB and e["files_total"] == 2 for e in events)

    (setup.folder / "a.bin").write_bytes(os.urandom(4 * MIB))
    heard: list[transfer.Progress] = []
    with capture_logs() as logs:
        pusher = setup.pusher()
        pusher.on_progress = heard.append
        assert pusher.push().pushed
    assert not [e for e in logs if e["event"] == "push.progress"]
    assert heard[-1] == transfer.Progress(4 * MIB, 4 * MIB, 1, 1)
    assert [p.bytes_done for p in heard] == sorted(p.bytes_done for p in heard)


def test_cli_push_shows_a_progress_bar_on_a_terminal_and_nothing_on_a_pipe(setup: Setup) -> None:
    """On a terminal (a pty) stderr carries tqdm's bar; on a pipe, none."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    (setup.folder / "a.bin").write_bytes(os.urandom(3 * MIB))
    setup.config_path.write_text(setup.config_path.read_text().replace(
        "[s3]\n", "[s3]\nmax_upload_bytes_per_second = 2097152\n"))
    piped = setup.cli("push", check=True)
    assert "1/1 files" not in piped.stderr and "\r" not in piped.stderr
    (setup.folder / "b.bin").write_bytes(os.urandom(3 * MIB))
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm hides bars past the rows
    try:
        proc = subprocess.run([sys.executable, "-m", "quiltsync", "--config", str(setup.config_path), "push"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sub, timeout=120)
        os.close(sub)
        seen = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the pty closed: everything was read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
    assert proc.returncode == 0 and proc.stdout.decode().startswith(setup.package)
    text = seen.decode(errors="replace")
    assert f"{setup.package}: " in text and "0/1 files" in text and "MB/s" in text, text


def test_the_bandwidth_cap_books_bytes_at_the_rate_for_all_callers() -> None:
    """Pure: with a fake clock, each read waits until the bytes booked before it have
    had their time at the rate (less the small idle credit), whoever sends them; 0 is
    no cap."""
    now = [100.0]
    waited: list[float] = []

    def sleep(s: float) -> None:
        waited.append(s)
        now[0] += s

    bw = transfer.Bandwidth(1000.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(100):
        bw.take(100)  # 10,000 bytes at 1,000 B/s
    # the 100th read starts when 9,900 bytes had their 9.9 s
    assert sum(waited) == pytest.approx(9.9 - transfer.BURST_SECONDS, abs=1e-6)
    now[0] += 60  # idle: only BURST_SECONDS of credit builds up
    waited.clear()
    bw.take(1000)
    bw.take(1000)
    assert sum(waited) == pytest.approx(1.0 - transfer.BURST_SECONDS, abs=1e-6)
    bw.set_rate(0)
    waited.clear()
    bw.take(10**9)
    assert waited == []


def test_a_failing_file_stops_the_upload_early_and_aborts_the_multipart(setup: Setup) -> None:
    """A file that vanished fails the call at once: the large file's multipart upload
    started beside it is aborted, not completed (no object version is left)."""
    big = setup.folder / "big.bin"
    big.write_bytes(os.urandom(40 * MIB))
    files = [transfer.Upload(f"{setup.package}/big.bin", big, 40 * MIB, name="big.bin"),
             transfer.Upload(f"{setup.package}/gone.bin", setup.folder / "gone.bin", 10, name="gone.bin")]
    transfer.transfers().configure(2, 8 * MIB)  # the big file would take 5 s
    _aborted_leaving_nothing(setup, files, ["gone.bin"])


def test_new_limits_during_an_upload_apply_and_the_upload_completes(setup: Setup) -> None:
    """A reload's new concurrency replaces the pool while an upload is in flight: its
    remaining parts go to the new pool, and every file is stored with its hash."""
    blobs = {f"f{i}.bin": os.urandom(9 * MIB + i) for i in range(3)}
    for name, data in blobs.items():
        (setup.folder / name).write_bytes(data)
    files = [transfer.Upload(f"{setup.package}/{n}", setup.folder / n, len(d), name=n) for n, d in blobs.items()]
    t = transfer.transfers()
    t.configure(4, 16 * MIB)
    reconfigured = []

    def hear(p: transfer.Progress) -> None:
        if not reconfigured and p.bytes_done > 4 * MIB:
            reconfigured.append(p.bytes_done)
            t.configure(2, 0)

    stored = t.upload(lambda: settings.thread_client("upload"), setup.registry, setup.registry.removeprefix("s3://"),
                      files, hear)
    assert reconfigured and t.concurrency == 2 and t.bandwidth.rate == 0
    assert [s.hash.value for s in stored] == [_quilt3_hash(d) for d in blobs.values()]
