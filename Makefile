# jukebox-lite: the pipeline as Make targets. Each stage is a file target on its outputs, so an
# interrupted `make all` resumes at the stage that was running (and inside it, from its last
# checkpoint), and a finished stage is not redone.
#
#   make demo                         set up, then run the whole pipeline on the built-in demo corpus
#   make test                         set up, then run the test suite
#   make all AUDIO=dir GENRE=name CONFIG=pipelines/deep_house.yaml
#   make help                         targets and variables

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0

CONFIG ?= pipelines/demo.yaml
RUN ?= runs/$(basename $(notdir $(CONFIG)))
AUDIO ?=
GENRE ?=
ARTIST ?=
SECONDS ?= 20
N ?= 2
# how training stages are launched: e.g. "torchrun --nproc_per_node 8 --" or "mpiexec -n 16"
LAUNCH ?=
# key=value recipe overrides, e.g. ARGS="data.workers=4 prior_level2.train.steps=500" (shell quoting for
# values with spaces): each stage takes the ones naming keys it reads; a key no stage reads fails at once
ARGS ?=
# extra options for the sample stage, e.g. SAMPLE_ARGS="--fast --morph-to tech_house --prime intro.wav" or
# "--like track.wav" (a top prior with a track character)
SAMPLE_ARGS ?=
LEVEL ?= 2
STEP ?=
# memory of one GPU in GB, for `make plan`
GPU_MEMORY ?= 80
# test files run side by side, one per core (pytest-xdist; a file's tests stay on one worker, sharing its fixtures)
TEST_WORKERS ?= auto

# Variables are data. Each reaches the commands through the environment and is quoted where the shell
# meets it, so spaces and quotes work and nothing in them runs (LAUNCH and PYTHON excepted: they are
# commands by design). Target paths (RUN, CONFIG, VENV) cannot hold spaces: make cannot track such files.
export JL_CONFIG := $(CONFIG)
export JL_RUN := $(RUN)
export JL_VENV := $(VENV)
# $(value ...): taken as written, never expanded by make either
export JL_AUDIO := $(value AUDIO)
export JL_GENRE := $(value GENRE)
export JL_ARTIST := $(value ARTIST)
export JL_SECONDS := $(value SECONDS)
export JL_N := $(value N)
export JL_LEVEL := $(value LEVEL)
export JL_STEP := $(value STEP)
export JL_GPU_MEMORY := $(value GPU_MEMORY)
export JL_TEST_WORKERS := $(value TEST_WORKERS)
export JL_SAMPLE_ARGS := $(value SAMPLE_ARGS)
export JUKEBOX_LITE_ARGS := $(value ARGS)  # the commands take their own keys from it (stages.common)
ifneq ($(words $(RUN) $(CONFIG) $(VENV)),3)
$(error RUN, CONFIG and VENV must be paths without spaces (make cannot track files whose names hold them))
endif

PY := "$$JL_VENV/bin/python"
JL := "$$JL_VENV/bin/jukebox-lite"
DEMO_AUDIO := data/demo
INSTALLED := $(VENV)/.installed
RECIPE := --config "$$JL_CONFIG" --run "$$JL_RUN"
LABELS := $${JL_GENRE:+--genre "$$JL_GENRE"} $${JL_ARTIST:+--artist "$$JL_ARTIST"}

.PHONY: help install test demo all check-vars recipe plan data vqvae codes prior upsamplers anneal refiner sample \
	check-copies review bench gpu-check clean-demo

help:
	@echo "Targets (each stage runs the ones it needs first):"
	@echo "  install       create $(VENV) and install jukebox-lite (torch $(TORCH_VERSION) pinned)"
	@echo "  test          install, then run the test suite"
	@echo "  demo          install, synthesize the demo corpus, run every stage on it (RUN=runs/demo)"
	@echo "  all           every stage below, in order"
	@echo "  data          vocal removal, resample, label, split AUDIO      → RUN/data"
	@echo "  vqvae         train the three-level VQ-VAE                     → RUN/vqvae"
	@echo "  codes         encode the corpus at every level                 → RUN/codes"
	@echo "  prior         train the top-level prior                        → RUN/prior_level2"
	@echo "  upsamplers    train the level-1 and level-0 upsamplers         → RUN/prior_level1, RUN/prior_level0"
	@echo "  anneal        resume prior LEVEL with the LR annealed to zero from STEP"
	@echo "  refiner       train the diffusion refiner                      → RUN/refiner"
	@echo "  sample        N new tracks of SECONDS in GENRE, copy-checked   → RUN/samples/<id>/"
	@echo "  check-copies  flag samples that replay the training corpus     → RUN/samples/<id>/copies.json"
	@echo "  review        the listening-review page                        → RUN/review.html"
	@echo "  recipe        print CONFIG as the stages read it, with ARGS applied"
	@echo "  plan          each training stage's memory on a GPU of GPU_MEMORY GB, and what would fit"
	@echo "  bench         the benchmarks in bench/ on this machine"
	@echo "  gpu-check     on a GPU: check every CUDA path and take every GPU figure → docs/gpu.md"
	@echo "Variables:"
	@echo "  CONFIG=$$JL_CONFIG  RUN=$$JL_RUN"
	@echo "  AUDIO=folder of music  GENRE=genre (labels every file in data; the genre to sample)  ARTIST=..."
	@echo "  GPU_MEMORY=$$JL_GPU_MEMORY (GB, for plan)  TEST_WORKERS=$$JL_TEST_WORKERS (test files side by side; 1: one at a time)"
	@echo "  SECONDS=$$JL_SECONDS  N=$$JL_N  SAMPLE_ARGS='--fast --morph-to G --prime F --temperature T --seed K'"
	@echo "  ARGS='key=value ...' recipe overrides  LAUNCH='torchrun --nproc_per_node N --' | 'mpiexec -n N'"

# torch is installed first and pinned (constraints.txt) so pip never swaps it: on a CPU machine the
# local CPU wheel, on a GPU box the normal CUDA wheel from PyPI.
$(INSTALLED): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv "$$JL_VENV"
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch "$$JL_VENV/.installed"

install: $(INSTALLED)

test: $(INSTALLED)
	$(PY) -m pytest -q -n "$$JL_TEST_WORKERS" --dist loadfile

# ---------------------------------------------------------------------------------------------
# Stages

# A bad ARGS word (a key no stage reads, a wrong value) fails in one sentence before a stage's work.
CHECK_ARGS := $(if $(strip $(ARGS)),$(JL) recipe --config "$$JL_CONFIG" > /dev/null,true)

# Bad variables fail in one sentence before any work starts.
check-vars: $(INSTALLED)
	@$(CHECK_ARGS)
	@[[ "$$JL_SECONDS" =~ ^[0-9]*\.?[0-9]+$$ ]] && awk -v s="$$JL_SECONDS" 'BEGIN { exit !(s > 0) }' \
		|| { echo "make: SECONDS=$$JL_SECONDS must be a positive number of seconds." >&2; exit 2; }
	@[[ "$$JL_N" =~ ^[1-9][0-9]*$$ ]] || { echo "make: N=$$JL_N must be a whole number of tracks, at least 1." >&2; exit 2; }
	@[[ -z "$$JL_AUDIO" || -d "$$JL_AUDIO" ]] || { echo "make: AUDIO=$$JL_AUDIO is not a folder." >&2; exit 2; }

data: $(RUN)/data/.done
$(RUN)/data/.done: $(INSTALLED) $(CONFIG)
	@$(CHECK_ARGS)
	@test -n "$$JL_AUDIO" || { echo "make data: set AUDIO to your folder of music, e.g. make data AUDIO=~/music/deep_house GENRE=deep_house" >&2; exit 2; }
	$(JL) prepare $(RECIPE) --audio "$$JL_AUDIO" $(LABELS)
	touch "$$JL_RUN/data/.done"

vqvae: $(RUN)/vqvae/.done
$(RUN)/vqvae/.done: $(RUN)/data/.done
	@$(CHECK_ARGS)
	$(LAUNCH) $(JL) train-vqvae $(RECIPE)
	touch "$$JL_RUN/vqvae/.done"

codes: $(RUN)/codes/.done
$(RUN)/codes/.done: $(RUN)/vqvae/.done
	@$(CHECK_ARGS)
	$(JL) encode --run "$$JL_RUN"
	$(JL) eval-vqvae --run "$$JL_RUN"
	touch "$$JL_RUN/codes/.done"

prior: $(RUN)/prior_level2/.done
upsamplers: $(RUN)/prior_level1/.done $(RUN)/prior_level0/.done
$(RUN)/prior_level%/.done: $(RUN)/codes/.done
	@$(CHECK_ARGS)
	$(LAUNCH) $(JL) train-prior --level $* $(RECIPE)
	touch "$$JL_RUN/prior_level$*/.done"

# Jukebox users "anneal": resume a prior with the LR decaying linearly to zero from STEP; it stops at zero.
anneal: $(RUN)/codes/.done
	@$(CHECK_ARGS)
	@test -n "$$JL_STEP" || { echo "make anneal: set STEP, the step where the LR starts decaying (e.g. STEP=40000)." >&2; exit 2; }
	$(LAUNCH) $(JL) train-prior --level "$$JL_LEVEL" $(RECIPE) "prior_level$$JL_LEVEL.train.anneal_start=$$JL_STEP"
	touch "$$JL_RUN/prior_level$$JL_LEVEL/.done"

refiner: $(RUN)/refiner/.done
$(RUN)/refiner/.done: $(RUN)/vqvae/.done
	@$(CHECK_ARGS)
	$(LAUNCH) $(JL) train-refiner $(RECIPE)
	$(JL) eval-refiner $(RECIPE)
	touch "$$JL_RUN/refiner/.done"

# `make sample` always makes new tracks; `make all` makes them once.
# SAMPLE_ARGS is split into words (read -a: nothing in it is run or expanded)
SAMPLE := read -ra sample_args <<< "$$JL_SAMPLE_ARGS"; \
	$(JL) sample $(RECIPE) --seconds "$$JL_SECONDS" --n "$$JL_N" $(LABELS) "$${sample_args[@]}"
sample: check-vars $(RUN)/prior_level2/.done $(RUN)/prior_level1/.done $(RUN)/prior_level0/.done $(RUN)/refiner/.done
	$(SAMPLE)
	$(JL) check-copies $(RECIPE)
$(RUN)/samples/.done: $(RUN)/prior_level2/.done $(RUN)/prior_level1/.done $(RUN)/prior_level0/.done $(RUN)/refiner/.done
	$(SAMPLE)
	touch "$$JL_RUN/samples/.done"

check-copies: check-vars
	$(JL) check-copies $(RECIPE)

# the page is cheap to render, so it is always redone to show the run as it is now
review: $(INSTALLED)
	$(JL) review $(RECIPE)

recipe: $(INSTALLED)
	$(JL) recipe --config "$$JL_CONFIG"

plan: $(INSTALLED)
	$(JL) plan --config "$$JL_CONFIG" --gpu-memory "$$JL_GPU_MEMORY"

all: check-vars $(RUN)/samples/.done
	$(MAKE) check-copies review

$(DEMO_AUDIO)/.done: $(INSTALLED)
	$(JL) demo-corpus --out $(DEMO_AUDIO)
	touch $(DEMO_AUDIO)/.done

demo: $(INSTALLED) $(DEMO_AUDIO)/.done
	$(MAKE) data CONFIG=pipelines/demo.yaml RUN=runs/demo AUDIO=$(DEMO_AUDIO)
	$(MAKE) all CONFIG=pipelines/demo.yaml RUN=runs/demo GENRE=deep_house SECONDS="$$JL_SECONDS" N="$$JL_N"
	@echo "Open runs/demo/review.html to listen."

bench: $(INSTALLED)
	$(PY) bench/bench_separation.py
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_vqvae.py
	$(PY) bench/bench_prior.py
	$(PY) bench/bench_refiner.py
	$(PY) bench/estimate_gpu_hours.py
	@if [ -d runs/demo/prior_level0 ]; then $(PY) bench/bench_upsampling.py --run runs/demo; \
	else echo "bench_upsampling.py skipped: it upsamples with the demo run's upsamplers (make demo first)"; fi

# the first thing to run on a GPU box: every CUDA path once and every GPU figure, in minutes
gpu-check: $(INSTALLED)
	$(PY) bench/gpu_check.py --device cuda --doc docs/gpu.md

clean-demo:
	rm -rf runs/demo $(DEMO_AUDIO)
