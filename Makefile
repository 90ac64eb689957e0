# Every target builds .venv itself: a fresh machine needs only python3, pip and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-systemd soak bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/quiltsync demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Root only: boots systemd as PID 1 of new namespaces and runs the real unit.
test-systemd: $(STAMP)
	$(BIN)/python -m pytest -q tests_systemd

# 200 crash trials (SIGKILL at random moments during edits and pushes); CI runs 20.
soak: $(STAMP)
	QUILTSYNC_SOAK_TRIALS=200 $(BIN)/python -m pytest -q -s tests/test_crash.py

bench: $(STAMP)
	$(BIN)/python bench/incremental.py
	$(BIN)/python bench/daemon.py latency
	$(BIN)/python bench/daemon.py storm
	$(BIN)/python bench/daemon.py idle

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info
