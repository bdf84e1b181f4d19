# Quick start:  make quickstart   (set up, then the whole pipeline on the built-in world)
#               make test         (set up, then the test suite; .ci/run runs this)
# On a CPU-only machine torch is pinned to its CPU wheel (constraints-cpu.txt); on a GPU
# machine run `make setup CONSTRAINTS=` (or plain `pip install -e .`) for the normal CUDA torch.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup quickstart generalise test test-slow bench gpu-check
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $@

quickstart: setup
	$(BIN)/rlhf-pipeline experiment=quickstart $(ARGS)

# The generalisation protocol (docs/generalisation.md): the recipe on the choosing side's task
# families, then on the held-out families, seed and labeler noise; each side's report/summary.md.
generalise: setup
	$(BIN)/rlhf-pipeline experiment=generalise_choose $(ARGS)
	$(BIN)/rlhf-pipeline experiment=generalise_heldout $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(ARGS)

# One GPU, bf16 (make setup CONSTRAINTS= first, for CUDA torch): a shortened Quick start (4,000 RM
# prompts, 40 PPO iterations per PPO step) with its wall time per step, then the speed benchmark
# on that run: per-phase times and tokens/s, old vs new code paths. Budget: under 8 min on an H200.
GPU_RUN ?= gpu_check
gpu-check: setup
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make gpu-check needs a CUDA GPU and CUDA torch (make setup CONSTRAINTS=)')"
	$(BIN)/rlhf-pipeline experiment=quickstart run_name=$(GPU_RUN) trainer=gpu trainer.devices=1 \
	  trainer.precision=bf16-mixed trainer.enable_progress_bar=false data.world.n_rm=4000 \
	  steps.ppo.stage.iterations=40 steps.ppo_ptx.stage.iterations=40 steps.ppo_beta.stage.iterations=40 $(ARGS)
	$(BIN)/python benchmarks/quickstart_speed.py --run outputs/$(GPU_RUN) --rounds 3
