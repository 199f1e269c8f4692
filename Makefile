# Two jobs: `make samples` runs every sample (offline unless .env / the environment configures real
# services), `make test` runs the test suite. Both create .venv and install requirements.txt first;
# the install is redone only when requirements.txt changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

SAMPLES := $(wildcard \
	custom_chat_message_store_thread.py \
	suspend_resume_thread.py \
	redis_chat_message_store_thread.py \
	durable_task_orchestrated_thread.py \
	durable_task_chat_message_store.py \
	durable_task_activity_chat_message_store.py \
	durable_task_multi_agent_thread.py)

.PHONY: samples test bench bench-scripts

samples: $(INSTALLED)
	@set -e; for sample in $(SAMPLES); do \
		echo; echo "===== python $$sample"; $(PY) $$sample; \
	done

test: $(INSTALLED)
	$(PY) -m pytest

# Not part of the two README commands: the per-turn benchmark (~7 min) and the scripts' wall times.
bench: $(INSTALLED)
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PY) bench/thread_store_bench.py

bench-scripts: $(INSTALLED)
	$(PY) bench/script_wall_times.py

$(INSTALLED): requirements.txt
	@echo "Creating $(VENV) and installing requirements.txt (once, ~30 s; redone only when requirements.txt changes)..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@
