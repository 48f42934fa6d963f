# jukebox-lite: the pipeline as Make targets. Each stage is a file target on its outputs, so an
# interrupted run resumes where it stopped and a finished stage is not redone.
#
#   make demo                         set up, then run the pipeline on the built-in demo corpus
#   make test                         set up, then run the test suite
#   make data AUDIO=dir GENRE=name    data stage on your own folder of music
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
LAUNCH ?=
# extra key=value recipe overrides for every stage, e.g. ARGS="data.workers=4"
ARGS ?=

DEMO_AUDIO := data/demo

INSTALLED := $(VENV)/.installed

.PHONY: help install test demo data review bench clean-demo

help:
	@echo "Targets:"
	@echo "  install     create $(VENV) and install jukebox-lite (torch $(TORCH_VERSION) pinned)"
	@echo "  test        install, then run the test suite"
	@echo "  demo        install, synthesize the demo corpus, run the pipeline on it (RUN=runs/demo)"
	@echo "  data        data stage: vocal removal, resample, label, split AUDIO into RUN/data"
	@echo "  review      execute the listening-review notebook into RUN/review.html"
	@echo "  bench       run the benchmarks in bench/ on this machine"
	@echo "Variables:"
	@echo "  CONFIG=$(CONFIG)  RUN=$(RUN)"
	@echo "  AUDIO=folder of music   GENRE=label for every file   ARTIST=label for every file"
	@echo "  ARGS='key=value ...' recipe overrides   LAUNCH='torchrun --nproc_per_node N' | 'mpiexec -n N'"

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

$(DEMO_AUDIO)/.done: $(INSTALLED)
	$(JL) demo-corpus --out $(DEMO_AUDIO)
	touch $@

data: $(RUN)/data/.done
$(RUN)/data/.done: $(INSTALLED) $(CONFIG)
	@test -n "$(AUDIO)" || { echo "make data: set AUDIO to your folder of music, e.g. make data AUDIO=~/music/deep_house GENRE=deep_house" >&2; exit 2; }
	$(JL) prepare --config $(CONFIG) --run $(RUN) $(if $(AUDIO),--audio $(AUDIO)) \
		$(if $(GENRE),--genre $(GENRE)) $(if $(ARTIST),--artist $(ARTIST)) $(ARGS)
	touch $@

# the page is cheap to render, so it is always redone to show the run as it is now
review: $(INSTALLED)
	$(JL) review --run $(RUN)

demo: $(INSTALLED) $(DEMO_AUDIO)/.done
	$(MAKE) data CONFIG=pipelines/demo.yaml RUN=runs/demo AUDIO=$(DEMO_AUDIO)
	$(MAKE) review RUN=runs/demo
	@echo "Open runs/demo/review.html to listen."

bench: $(INSTALLED)
	$(PY) bench/bench_separation.py
	$(PY) bench/bench_ingest.py

clean-demo:
	rm -rf runs/demo $(DEMO_AUDIO)
