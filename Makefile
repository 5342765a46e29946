# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Every target depends on `install`, which is a no-op once the venv matches pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install demo test test-all lint format prepare train train-encoder score bench clean distclean

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
	$(PY) -m mammo_anogan.prepare data=demo prepare.salt_seed=0
	$(PY) -m mammo_anogan.train +experiment=demo hydra.run.dir=$(DEMO_DIR)/train
	$(PY) -m mammo_anogan.train_encoder +experiment=demo generator=$(DEMO_DIR)/train/generator.pt \
		hydra.run.dir=$(DEMO_DIR)/encoder
	$(PY) -m mammo_anogan.score +experiment=demo generator=$(DEMO_DIR)/train/generator.pt \
		encoder=$(DEMO_DIR)/encoder/encoder.pt hydra.run.dir=$(DEMO_DIR)/score
	@$(PY) -m mammo_anogan.evaluation.summary $(DEMO_DIR)/score
	@echo "Demo finished: metrics in $(DEMO_DIR)/score/metrics.json, figures (cases.png, roc.png) in $(DEMO_DIR)/score/"

test: install
	$(PY) -m pytest $(ARGS)

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

bench: install
	$(PY) bench/prepare.py
	$(PY) bench/train.py
	$(PY) bench/score.py

# `clean` depends on `install` like every user-facing target (as specified); `distclean` also removes the venv.
CLEAN_PATHS := outputs multirun wandb lightning_logs .pytest_cache build *.egg-info
clean: install
	rm -rf $(CLEAN_PATHS)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean:
	rm -rf $(CLEAN_PATHS) $(VENV)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
