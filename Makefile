# Two commands on a fresh machine with Python >= 3.10 and pip:
#   make train   set up .venv if absent, then run the project's main job
#   make test    set up .venv if absent, then the whole suite, notebooks included
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned so that pip never swaps in another build;
# override for your machine, e.g. `make test TORCH_SPEC="torch>=2.4"`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup train test data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# Until the training pipeline lands, the main job is the evaluation of the scripted agents.
train: setup
	@echo "Training is not built yet: evaluating the scripted agents on the held-out world instead."
	$(PY) -m mgrpo_ref.evaluate --main oracle --sub oracle --out runs/eval_oracle.json
	$(PY) -m mgrpo_ref.evaluate --main teacher --sub teacher --show 1 --out runs/eval_teacher.json

test: setup
	$(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

# Regenerate the committed worlds and question splits (bit for bit).
data: setup
	$(PY) -m mgrpo_ref.world --out data

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
