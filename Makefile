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
PY := $(VENV)/bin/python
JL := $(VENV)/bin/jukebox-lite
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
# key=value recipe overrides, e.g. ARGS="data.workers=4 prior_level2.train.steps=500": each stage gets
# the ones naming keys it reads (its commands refuse any other); a key no stage reads fails at once
ARGS ?=
# extra options for the sample stage, e.g. SAMPLE_ARGS="--fast --morph-to tech_house --prime intro.wav"
SAMPLE_ARGS ?=

DEMO_AUDIO := data/demo
INSTALLED := $(VENV)/.installed
RECIPE := --config $(CONFIG) --run $(RUN)
# the ARGS words for a command that reads recipe keys under $(1), e.g. $(call args_for,seed vqvae)
args_for = $(filter $(foreach key,$(1),$(key)=% $(key).%),$(ARGS))

.PHONY: help install test demo all check-vars recipe data vqvae codes prior upsamplers anneal refiner sample \
	check-copies review bench clean-demo

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
	@echo "  sample        N new tracks of SECONDS in GENRE                 → RUN/samples/<id>/"
	@echo "  check-copies  flag samples that replay the training corpus     → RUN/samples/<id>/copies.json"
	@echo "  review        the listening-review page                        → RUN/review.html"
	@echo "  recipe        print CONFIG as the stages read it, with ARGS applied"
	@echo "  bench         the benchmarks in bench/ on this machine"
	@echo "Variables:"
	@echo "  CONFIG=$(CONFIG)  RUN=$(RUN)"
	@echo "  AUDIO=folder of music  GENRE=genre (labels every file in data; the genre to sample)  ARTIST=..."
	@echo "  SECONDS=$(SECONDS)  N=$(N)  SAMPLE_ARGS='--fast --morph-to G --prime F --temperature T --seed K'"
	@echo "  ARGS='key=value ...' recipe overrides  LAUNCH='torchrun --nproc_per_node N --' | 'mpiexec -n N'"

# torch is installed first and pinned (constraints.txt) so pip never swaps it: on a CPU machine the
# local CPU wheel, on a GPU box the normal CUDA wheel from PyPI.
$(INSTALLED): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(INSTALLED)

test: $(INSTALLED)
	$(PY) -m pytest -q

# ---------------------------------------------------------------------------------------------
# Stages

# A bad ARGS word (a key no stage reads, a wrong value) fails in one sentence before a stage's work.
CHECK_ARGS := $(if $(strip $(ARGS)),$(JL) recipe --config $(CONFIG) $(ARGS) > /dev/null,true)

# Bad variables fail in one sentence before any work starts.
check-vars: $(INSTALLED)
	@$(CHECK_ARGS)
	@[[ "$(SECONDS)" =~ ^[0-9]*\.?[0-9]+$$ ]] && awk 'BEGIN { exit !($(SECONDS) > 0) }' \
		|| { echo "make: SECONDS=$(SECONDS) must be a positive number of seconds." >&2; exit 2; }
	@[[ "$(N)" =~ ^[1-9][0-9]*$$ ]] || { echo "make: N=$(N) must be a whole number of tracks, at least 1." >&2; exit 2; }
	@[[ -z "$(AUDIO)" || -d "$(AUDIO)" ]] || { echo "make: AUDIO=$(AUDIO) is not a folder." >&2; exit 2; }

data: $(RUN)/data/.done
$(RUN)/data/.done: $(INSTALLED) $(CONFIG)
	@$(CHECK_ARGS)
	@test -n "$(AUDIO)" || { echo "make data: set AUDIO to your folder of music, e.g. make data AUDIO=~/music/deep_house GENRE=deep_house" >&2; exit 2; }
	$(JL) prepare $(RECIPE) --audio $(AUDIO) $(if $(GENRE),--genre $(GENRE)) $(if $(ARTIST),--artist $(ARTIST)) $(call args_for,data)
	touch $@

vqvae: $(RUN)/vqvae/.done
$(RUN)/vqvae/.done: $(RUN)/data/.done
	@$(CHECK_ARGS)
	$(LAUNCH) $(JL) train-vqvae $(RECIPE) $(call args_for,seed vqvae)
	touch $@

codes: $(RUN)/codes/.done
$(RUN)/codes/.done: $(RUN)/vqvae/.done
	@$(CHECK_ARGS)
	$(JL) encode --run $(RUN)
	$(JL) eval-vqvae --run $(RUN)
	touch $@

prior: $(RUN)/prior_level2/.done
upsamplers: $(RUN)/prior_level1/.done $(RUN)/prior_level0/.done
$(RUN)/prior_level%/.done: $(RUN)/codes/.done
	@$(CHECK_ARGS)
	$(LAUNCH) $(JL) train-prior --level $* $(RECIPE) $(call args_for,seed prior_level$*)
	touch $@

# Jukebox users "anneal": resume a prior with the LR decaying linearly to zero from STEP; it stops at zero.
LEVEL ?= 2
anneal: $(RUN)/codes/.done
	@$(CHECK_ARGS)
	@test -n "$(STEP)" || { echo "make anneal: set STEP, the step where the LR starts decaying (e.g. STEP=40000)." >&2; exit 2; }
	$(LAUNCH) $(JL) train-prior --level $(LEVEL) $(RECIPE) prior_level$(LEVEL).train.anneal_start=$(STEP) \
		$(call args_for,seed prior_level$(LEVEL))
	touch $(RUN)/prior_level$(LEVEL)/.done

refiner: $(RUN)/refiner/.done
$(RUN)/refiner/.done: $(RUN)/vqvae/.done
	@$(CHECK_ARGS)
	$(LAUNCH) $(JL) train-refiner $(RECIPE) $(call args_for,seed refiner)
	$(JL) eval-refiner --run $(RUN)
	touch $@

# `make sample` always makes new tracks; `make all` makes them once.
SAMPLE := $(JL) sample $(RECIPE) --seconds $(SECONDS) --n $(N) $(if $(GENRE),--genre $(GENRE)) \
	$(if $(ARTIST),--artist $(ARTIST)) $(SAMPLE_ARGS) $(call args_for,name sample)
sample: check-vars $(RUN)/prior_level2/.done $(RUN)/prior_level1/.done $(RUN)/prior_level0/.done $(RUN)/refiner/.done
	$(SAMPLE)
$(RUN)/samples/.done: $(RUN)/prior_level2/.done $(RUN)/prior_level1/.done $(RUN)/prior_level0/.done $(RUN)/refiner/.done
	$(SAMPLE)
	touch $@

check-copies: check-vars
	$(JL) check-copies $(RECIPE) $(call args_for,copies)

# the page is cheap to render, so it is always redone to show the run as it is now
review: $(INSTALLED)
	$(JL) review --run $(RUN)

recipe: $(INSTALLED)
	$(JL) recipe --config $(CONFIG) $(ARGS)

all: check-vars $(RUN)/samples/.done
	$(MAKE) check-copies review

$(DEMO_AUDIO)/.done: $(INSTALLED)
	$(JL) demo-corpus --out $(DEMO_AUDIO)
	touch $@

demo: $(INSTALLED) $(DEMO_AUDIO)/.done
	$(MAKE) data CONFIG=pipelines/demo.yaml RUN=runs/demo AUDIO=$(DEMO_AUDIO)
	$(MAKE) all CONFIG=pipelines/demo.yaml RUN=runs/demo GENRE=deep_house SECONDS=$(SECONDS) N=$(N)
	@echo "Open runs/demo/review.html to listen."

bench: $(INSTALLED)
	$(PY) bench/bench_separation.py
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_vqvae.py
	$(PY) bench/bench_prior.py
	$(PY) bench/bench_refiner.py
	$(PY) bench/estimate_gpu_hours.py

clean-demo:
	rm -rf runs/demo $(DEMO_AUDIO)
