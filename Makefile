# lenet-hw: every target chains `python -m <stage>` over files in build/.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARCH ?= lenet5
SEED ?= 0
EPOCHS ?=
PYTEST_ARGS ?=
JOBS ?= 2

.PHONY: all install train train-all evaluate quantize bench sweep test test-slow clean help

help:
	@echo "make all        main job: evaluate the committed LeNet-5, quantize it (q8, anna), report"
	@echo "make install    .venv with torch 2.13.0 (CPU), the project and its dev tools, Icarus Verilog"
	@echo "make test       the test suite (CI runs this)"
	@echo "make test-slow  long regressions (marker 'slow')"
	@echo "make train      train ARCH=$(ARCH) (SEED, EPOCHS) into build/checkpoints/"
	@echo "make train-all  train LeNet-1, LeNet-4 and LeNet-5 with the README's commands"
	@echo "make evaluate   test error of every committed checkpoint"
	@echo "make quantize   build/quant/lenet5-q8/ and build/quant/lenet5-anna/ QuantSpecs"
	@echo "make bench      emulator vs torch float32 throughput (one JSON object)"
	@echo "make sweep      quantization sweep report in build/reports/sweep/ (JOBS=$(JOBS))"
	@echo "make clean      remove build/"

all: evaluate quantize
	$(PY) -m quantize.evaluate --spec build/quant/lenet5-q8
	$(PY) -m quantize.evaluate --spec build/quant/lenet5-anna

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@if ! command -v iverilog >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq iverilog; \
	  else echo "note: Icarus Verilog is missing; install it with: sudo apt-get install iverilog"; fi; fi
	@touch $@

install: $(STAMP)

train: $(STAMP)
	$(PY) -m model.train --arch $(ARCH) --seed $(SEED) $(if $(EPOCHS),--epochs $(EPOCHS)) --out build/checkpoints/$(ARCH).pt

train-all: $(STAMP)
	$(PY) -m model.train --arch lenet1 --seed 0 --out build/checkpoints/lenet1.pt
	$(PY) -m model.train --arch lenet4 --seed 0 --out build/checkpoints/lenet4.pt
	$(PY) -m model.train --arch lenet5 --seed 0 --out build/checkpoints/lenet5.pt

evaluate: $(STAMP)
	@for a in lenet1 lenet4 lenet5; do $(PY) -m model.evaluate --arch $$a || exit 1; done

build/quant/lenet5-%/spec.json: model/checkpoints/lenet5.pt $(STAMP)
	$(PY) -m quantize --checkpoint $< --preset $* --out $(@D)

quantize: build/quant/lenet5-q8/spec.json build/quant/lenet5-anna/spec.json

bench: quantize
	$(PY) -m quantize.bench --spec build/quant/lenet5-q8

sweep: $(STAMP)
	$(PY) -m quantize.sweep --checkpoint model/checkpoints/lenet5.pt --jobs $(JOBS) --out build/reports/sweep

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf build
