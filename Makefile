# Two jobs: `make samples` runs every sample (offline unless .env / the environment configures real
# services), `make test` runs the test suite. Both create .venv and install requirements.txt first;
# the install is redone only when requirements.txt changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# The benchmark's extras: matplotlib for its plot, and the official durable agent in a venv of its own (it pins
# python-dateutil < 3; the samples' requirements.txt stays as it is).
BENCH_INSTALLED := $(VENV)/.bench-installed
PEER_VENV := .venv-bench-peer
PEER_INSTALLED := $(PEER_VENV)/.installed

SAMPLES := $(wildcard \
	custom_chat_message_store_thread.py \
	suspend_resume_thread.py \
	redis_chat_message_store_thread.py \
	durable_task_orchestrated_thread.py \
	durable_task_chat_message_store.py \
	durable_task_activity_chat_message_store.py \
	durable_task_multi_agent_thread.py)

.PHONY: samples test bench bench-scripts bench-peer

samples: $(INSTALLED)
	@set -e; for sample in $(SAMPLES); do \
		echo; echo "===== python $$sample"; $(PY) $$sample; \
	done

# Two test processes (pytest-xdist); `.venv/bin/python -m pytest` alone runs the same tests in one.
test: $(INSTALLED)
	$(PY) -m pytest -n 2

# Not part of the two README commands: every benchmark in one run (~17 min on 2 cores), each writing its table to
# bench/results/: the per-turn benchmark, our orchestrated thread beside the official durable agent, and the wall
# times of the samples and of three consecutive `make test` runs.
bench: $(BENCH_INSTALLED) $(PEER_INSTALLED)
	$(PY) bench/thread_store_bench.py
	$(PEER_VENV)/bin/python bench/peer/durable_agent_peer.py
	$(PY) bench/script_wall_times.py --suite-runs 3 --write

bench-peer: $(PEER_INSTALLED)
	$(PEER_VENV)/bin/python bench/peer/durable_agent_peer.py

bench-scripts: $(INSTALLED)
	$(PY) bench/script_wall_times.py --write

$(BENCH_INSTALLED): $(INSTALLED) bench/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

$(PEER_INSTALLED): requirements.txt bench/peer/requirements.txt
	@echo "Creating $(PEER_VENV) for the official durable agent (bench/peer/requirements.txt; once)..."
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/peer/requirements.txt
	touch $@

$(INSTALLED): requirements.txt
	@echo "Creating $(VENV) and installing requirements.txt (once, ~30 s; redone only when requirements.txt changes)..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@
