# Every target builds .venv itself: a fresh machine needs only python3, pip and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint test-systemd test-s3-ceph soak bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/quiltsync demo

# The whole suite: lint and types first (they fail fast), then every test.
test: lint
	$(BIN)/python -m pytest -q tests

FAST_TESTS := tests/test_schedule.py tests/test_message.py tests/test_diff.py tests/test_retention.py tests/test_daemon_core.py tests/test_state.py tests/test_layers.py \
	tests/test_units.py tests/test_config.py tests/test_fuzz.py tests/test_watchmode.py tests/test_polls.py

# The inner loop: lint, types, and the pure and in-process tests (no S3 server, no
# daemon process); under a minute.
test-fast: lint
	$(BIN)/python -m pytest -q $(FAST_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench tests_systemd tests_ceph
	$(BIN)/mypy

# Root only: boots systemd as PID 1 of new namespaces and runs the real unit.
test-systemd: $(STAMP)
	$(BIN)/python -m pytest -q tests_systemd

# Root only, with Debian's ceph-mon, ceph-osd, radosgw and ceph-common: a one-node Ceph
# cluster on 127.0.0.1 (tests/s3ceph.py), an S3 server without flexible checksums.
test-s3-ceph: $(STAMP)
	$(BIN)/python -m pytest -q tests_ceph

# 200 crash trials (SIGKILL at random moments during edits and pushes); CI runs 20.
soak: $(STAMP)
	QUILTSYNC_SOAK_TRIALS=200 $(BIN)/python -m pytest -q -s tests/test_crash.py

bench: $(STAMP)
	$(BIN)/python bench/incremental.py
	$(BIN)/python bench/history.py
	$(BIN)/python bench/prune.py
	$(BIN)/python bench/daemon.py latency
	$(BIN)/python bench/daemon.py storm
	$(BIN)/python bench/daemon.py idle
	$(BIN)/python bench/polling.py
	$(BIN)/python bench/cost.py
	$(BIN)/python bench/transfer.py

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info
