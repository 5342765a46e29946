# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Every target depends on `install`, which is a no-op once the venv matches pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install demo test test-oldest test-all lint format prepare train train-encoder score doctor bench gpu-check clean distclean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "frd-score>=1.0"
	@touch $(STAMP)

# The main job end to end on the embedded synthetic phantoms: prepare -> train -> encoder -> score.
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, which keeps a 2-core
# machine that is busy with anything else from slowing training down several-fold.
DEMO_DIR := outputs/demo
demo: export OMP_WAIT_POLICY ?= PASSIVE
demo: install
	$(PY) -m mammo_anogan.prepare data=demo
	$(PY) -m mammo_anogan.train +experiment=demo hydra.run.dir=$(DEMO_DIR)/train
	$(PY) -m mammo_anogan.train_encoder +experiment=demo generator=$(DEMO_DIR)/train/generator.pt \
		hydra.run.dir=$(DEMO_DIR)/encoder
	$(PY) -m mammo_anogan.score +experiment=demo generator=$(DEMO_DIR)/train/generator.pt \
		encoder=$(DEMO_DIR)/encoder/encoder.pt hydra.run.dir=$(DEMO_DIR)/score
	@$(PY) -m mammo_anogan.evaluation.summary $(DEMO_DIR)/score
	@echo "Demo finished: metrics in $(DEMO_DIR)/score/metrics.json, figures (cases.png, roc.png) in $(DEMO_DIR)/score/"

test: install
	$(PY) -m pytest $(ARGS)

# The same suite on the oldest versions pyproject.toml accepts (.ci/oldest-constraints.txt), in a second
# venv installed from the registry like the first: proves the declared floor (CI runs it after `test`).
VENV_OLDEST := .venv-oldest
PY_OLDEST := $(VENV_OLDEST)/bin/python
STAMP_OLDEST := $(VENV_OLDEST)/.installed
$(STAMP_OLDEST): pyproject.toml .ci/oldest-constraints.txt
	@test -x $(PY_OLDEST) || $(PYTHON) -m venv $(VENV_OLDEST)
	$(PY_OLDEST) -m pip install --quiet --upgrade pip
	$(PY_OLDEST) -m pip install --quiet -c .ci/oldest-constraints.txt -e ".[dev]"
	$(PY_OLDEST) -m pip install --quiet --no-deps "frd-score>=1.0"
	@touch $(STAMP_OLDEST)

test-oldest: $(STAMP_OLDEST)
	$(PY_OLDEST) -c "import torch, torchvision, numpy, pytorch_lightning as pl, albumentations as A, pydicom; \
	print('oldest supported:', 'torch', torch.__version__, 'torchvision', torchvision.__version__, \
	'numpy', numpy.__version__, 'lightning', pl.__version__, 'albumentations', A.__version__, 'pydicom', pydicom.__version__)"
	$(PY_OLDEST) -m pytest $(ARGS)

test-all: install
	$(PY) -m pytest -m "" $(ARGS)

lint: install
	$(PY) -m ruff check mammo_anogan tests bench
	$(PY) -m ruff format --check mammo_anogan tests bench

format: install
	$(PY) -m ruff check --fix mammo_anogan tests bench
	$(PY) -m ruff format mammo_anogan tests bench

prepare: install
	$(PY) -m mammo_anogan.prepare $(ARGS)

train: install
	$(PY) -m mammo_anogan.train $(ARGS)

train-encoder: install
	$(PY) -m mammo_anogan.train_encoder $(ARGS)

score: install
	$(PY) -m mammo_anogan.score $(ARGS)

# What this machine can run before a long job: torch/CUDA/bf16, GPUs, presets that fit, offline
# weights, free disk, prepared datasets (reads only).
doctor: install
	$(PY) -m mammo_anogan.doctor $(ARGS)

bench: install
	$(PY) bench/prepare.py
	$(PY) bench/train.py
	$(PY) bench/score.py

# One CUDA GPU: the GPU tier, a pre-empted real training, a short score and the speed benchmarks (<= 8 min).
gpu-check: install
	PYTHON=$(PY) bash bench/gpu_check.sh $(ARGS)

# `clean` depends on `install` like every user-facing target (as specified); `distclean` also removes the venv.
CLEAN_PATHS := outputs multirun wandb lightning_logs .pytest_cache build *.egg-info gpu_check_out
clean: install
	rm -rf $(CLEAN_PATHS)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean:
	rm -rf $(CLEAN_PATHS) $(VENV) $(VENV_OLDEST)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
