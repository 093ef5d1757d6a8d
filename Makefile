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
LANES ?= 8
SIM ?= verilator
# images for `make sim`: 1,000 in Verilator (about 40 s with the build), 100 in Icarus (about 2 min)
IMAGES ?= $(if $(filter icarus,$(SIM)),100,1000)
VERILATOR_WAIVERS := -Wno-WIDTHEXPAND -Wno-WIDTHTRUNC -Wno-CASEINCOMPLETE -Wno-CMPCONST
# every network with a committed checkpoint: the LeNets, the boosted LeNet-4 (model/boosted.py: three
# LeNet-4s as one network; member 1 is model/checkpoints/lenet4.pt), the 1989 lineage (model/lineage.py)
LENETS := lenet1 lenet4 lenet5
ENSEMBLES := boosted-lenet4
LINEAGE := zip1989 net1 net2 net3 net4 net5
NETWORKS := $(LENETS) $(ENSEMBLES) $(LINEAGE)
# q8 alone for the ensemble (anna's QAT on three LeNet-4s is not part of the recipe) and the 1989 lineage
PRESETS ?= $(if $(filter $(ARCH),$(ENSEMBLES) $(LINEAGE)),q8,q8 anna)

.PHONY: all install train train-all train-lineage evaluate quantize verilog lint sim sim-full sim-layers bench bench-sim sweep bench-dask explore example qonnx qonnx-models test test-slow clean help

help:
	@echo "make all        main job: evaluate, quantize (q8, anna), verilog, sim; ends with a summary"
	@echo "make install    .venv with torch 2.13.0 (CPU), the project and its dev tools, Icarus Verilog"
	@echo "make test       the test suite (CI runs this)"
	@echo "make test-slow  long regressions (marker 'slow')"
	@echo "make train      train ARCH=$(ARCH) (SEED, EPOCHS) into build/checkpoints/"
	@echo "make train-all  train every network (LeNets and 1989 lineage) with the README's commands"
	@echo "make train-lineage  train zip1989 and net1..net5 (JOBS at a time, a few minutes)"
	@echo "make evaluate   test error of every committed checkpoint"
	@echo "make quantize   build/quant/ARCH-q8/ and build/quant/ARCH-anna/ QuantSpecs (ARCH=lenet1|lenet4|lenet5)"
	@echo "make verilog    build/verilog/ARCH_q8.v and ARCH_anna.v (+ JSON manifests), LANES=$(LANES)"
	@echo "make lint       iverilog -g2012 and verilator --lint-only on the emitted Verilog"
	@echo "make sim        RTL vs emulator: ARCH q8, the first IMAGES=$(IMAGES) MNIST test images, SIM=$(SIM) (or icarus)"
	@echo "make sim-full   RTL vs emulator: every test digit of ARCH (10,000 MNIST; own split for the 1989 networks), PRESETS, Verilator"
	@echo "make sim-layers layer tops (requantize, MAC, activation LUT) vs emulator, Icarus (SIM=verilator)"
	@echo "make bench      emulator vs torch float32 throughput; cycle model for lanes 1, 8, 32"
	@echo "make bench-sim  simulator speed: Icarus (10 images, 1 process) and Verilator (1,000 images, JOBS), cycles/s"
	@echo "make synth      bitstreams + resources/Fmax/images/s: iCE40 UP5K, ECP5-25F, ECP5-85F (build/reports/synth.md)"
	@echo "make sweep      quantization sweep report in build/reports/sweep/ (JOBS=$(JOBS); EXECUTOR=dask SCHEDULER=tcp://...)"
	@echo "make bench-dask the 142-point sweep on the local executor and on Dask (scheduler + JOBS workers here): times, same results"
	@echo "make explore    hardware design space (hw.explore): specs x targets x lanes x batch x clock builds + Verilator, build/reports/explore/ (JOBS, EXECUTOR, SCHEDULER, EXPLORE_ARGS)"
	@echo "make example    bring your own model: train a small ReLU/max-pool CNN, ONNX, q8 spec, Verilog, Verilator (docs/import.md)"
	@echo "make qonnx      the committed Brevitas/QONNX models (examples/qonnx/): spec, emulator vs model, Verilator (QONNX_IMAGES=$(QONNX_IMAGES))"
	@echo "make qonnx-models  retrain and re-export them (examples/brevitas_cnn.py, about 3 minutes each)"
	@echo "make clean      remove build/"

# the main job: every stage writes a JSON report into build/reports/, then one summary of them all
all: $(STAMP)
	@mkdir -p build/reports
	$(MAKE) --no-print-directory -j$(JOBS) quantize verilog
	@set -o pipefail; for a in $(NETWORKS); do $(PY) -m model.evaluate --arch $$a --json || exit 1; done \
	  | tee build/reports/float.jsonl.tmp && mv build/reports/float.jsonl.tmp build/reports/float.jsonl
	@set -o pipefail; for p in $(PRESETS); do $(PY) -m quantize.evaluate --spec build/quant/$(ARCH)-$$p --json || exit 1; done \
	  | tee build/reports/quant.jsonl.tmp && mv build/reports/quant.jsonl.tmp build/reports/quant.jsonl
	@rm -f build/reports/sim.jsonl
	-$(PY) -m sim --spec build/quant/$(ARCH)-q8 --images $(IMAGES) --simulator $(SIM) --lanes $(LANES) --jobs $(JOBS) \
	  --json --report build/reports/sim.jsonl
	$(PY) -m sim.summary build/reports

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@if ! command -v iverilog >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq iverilog; \
	  else echo "note: Icarus Verilog is missing; install it with: sudo apt-get install iverilog"; fi; fi
	tools/install-verilator-wrapper $(VENV)
	@touch $@

install: $(STAMP)

# each network's recipe (epochs, distortions, loss scale, 1 thread) is in model/train.py
train: $(STAMP)
	$(PY) -m model.train --arch $(ARCH) --seed $(SEED) $(if $(EPOCHS),--epochs $(EPOCHS)) --out build/checkpoints/$(ARCH).pt

train-all: $(STAMP)
	for a in $(NETWORKS); do $(PY) -m model.train --arch $$a --seed 0 --out build/checkpoints/$$a.pt || exit 1; done

# the 1989 lineage alone (minutes): JOBS trainings at a time, one thread each (the recipes' count)
train-lineage: $(STAMP)
	@mkdir -p build/checkpoints
	printf '%s\n' $(LINEAGE) | xargs -P $(JOBS) -I{} $(PY) -m model.train --arch {} --seed 0 --no-progress \
	  --out build/checkpoints/{}.pt

# each network's error on its own test split (MNIST's for the LeNets, the stand-ins for the 1989 networks)
evaluate: $(STAMP)
	@for a in $(NETWORKS); do $(PY) -m model.evaluate --arch $$a || exit 1; done

# a spec per network and preset: build/quant/ARCH-PRESET from model/checkpoints/ARCH.pt
CHECKPOINTS := $(wildcard model/checkpoints/*.pt)
# (the preset is the last dash-separated word, so a network's name may hold dashes)
build/quant/%/spec.json: $(CHECKPOINTS) $(STAMP)
	$(PY) -m quantize --checkpoint model/checkpoints/$(patsubst %-$(lastword $(subst -, ,$*)),%,$*).pt \
	  --preset $(lastword $(subst -, ,$*)) --out $(@D)

quantize: $(foreach p,$(PRESETS),build/quant/$(ARCH)-$(p)/spec.json)

# the Verilog is a function of the spec, the lanes and the generator's source
HW_SOURCES := $(wildcard hw/*.py)
# (the top module is the network's name with dashes as underscores, then the preset)
VTOP := $(subst -,_,$(ARCH))
build/verilog/$(VTOP)_%.v: build/quant/$(ARCH)-%/spec.json $(HW_SOURCES)
	$(PY) -m hw.generate --spec $(<D) --lanes $(LANES) --out build/verilog

verilog: $(foreach p,$(PRESETS),build/verilog/$(VTOP)_$(p).v)

lint: verilog
	@for t in $(foreach p,$(PRESETS),$(VTOP)_$(p)); do \
	  iverilog -g2012 -o build/verilog/$$t.vvp build/verilog/$$t.v && \
	  PATH=$(VENV)/bin:$$PATH verilator --lint-only $(VERILATOR_WAIVERS) --top-module $$t build/verilog/$$t.v && \
	  echo "$$t: iverilog and verilator lint clean" || exit 1; done

sim: build/quant/$(ARCH)-q8/spec.json
	$(PY) -m sim --spec build/quant/$(ARCH)-q8 --images $(IMAGES) --simulator $(SIM) --lanes $(LANES) --jobs $(JOBS)

# sim-full: every test digit of ARCH's network (MNIST's 10,000 for the LeNets; the network's own split for the
# 1989 lineage: 2,007 for zip1989, 160 for net1..net5), for each of PRESETS (default q8 and anna; q8 alone for
# the boosted LeNet-4 and the 1989 lineage, whose local layers and per-unit biases anna's QAT does not handle yet)
# SIM_CONFIG: the target whose shipped configuration (hw.targets.SHIPPED: lanes, batch, fused pools, overlapped
# load, DSP pairs) the RTL is built in
SIM_CONFIG ?= ice40-up5k
sim-full: $(foreach p,$(PRESETS),build/quant/$(ARCH)-$(p)/spec.json)
	@mkdir -p build/reports
	@rm -f build/reports/sim-full-$(ARCH).jsonl
	@for p in $(PRESETS); do $(PY) -m sim --spec build/quant/$(ARCH)-$$p --images all --simulator verilator \
	  $(if $(SIM_CONFIG),--config $(SIM_CONFIG),--lanes $(LANES)) --jobs $(JOBS) --report build/reports/sim-full-$(ARCH).jsonl || exit 1; done

bench: build/quant/lenet5-q8/spec.json
	$(PY) -m quantize.bench --spec build/quant/lenet5-q8
	$(PY) -m hw.perf --spec build/quant/lenet5-q8 --lanes 1 8 32 --json

# simulator speed (README, RTL vs emulator): one Icarus process, then Verilator with JOBS processes
bench-sim: build/quant/lenet5-q8/spec.json
	@$(PY) -m sim --spec build/quant/lenet5-q8 --images 10 --simulator icarus --jobs 1 --quiet
	@$(PY) -m sim --spec build/quant/lenet5-q8 --images 1000 --simulator verilator --jobs $(JOBS) --quiet

# the shipped builds (README table): the clock each asks for is met, no --timing-allow-fail
# each target in its shipped configuration (hw.targets.SHIPPED: lanes, batch, clock, fused pools, overlapped
# load, placement seed)
SYNTH_BUILDS := \
  "--spec build/quant/lenet5-q8 --target ice40-up5k" \
  "--spec build/quant/lenet5-anna --target ice40-up5k" \
  "--spec build/quant/lenet5-q8 --target ecp5-25k" \
  "--spec build/quant/lenet5-q8 --target ecp5-85k"
synth: build/quant/lenet5-q8/spec.json build/quant/lenet5-anna/spec.json
	@mkdir -p build/reports
	@set -o pipefail; for b in $(SYNTH_BUILDS); do $(PY) -m hw.synth $$b --json || exit 1; done \
	  | $(PY) -m hw.synth_report --out build/reports/synth.md

# the import walk-through of docs/import.md (EXAMPLE_ARGS=--synth adds the UP5K build)
example: $(STAMP)
	$(PY) examples/import_walkthrough.py --out build/example $(EXAMPLE_ARGS)

EXECUTOR ?= local
SCHEDULER ?=
QONNX_MODELS ?= cnn_w8a8 cnn_w4a4
QONNX_IMAGES ?= 10000
qonnx: $(STAMP)
	@set -e; for m in $(QONNX_MODELS); do \
	  $(PY) -m quantize --model examples/qonnx/$$m.onnx --out build/qonnx/$$m; \
	  $(PY) -m quantize.evaluate --spec build/qonnx/$$m --against examples/qonnx/$$m.onnx --limit $(QONNX_IMAGES); \
	  $(PY) -m sim --spec build/qonnx/$$m --images $(QONNX_IMAGES) --jobs $(JOBS) --out build/sim/qonnx \
	    --report build/reports/qonnx-$$m.jsonl; \
	done

qonnx-models: $(STAMP)
	$(PY) examples/brevitas_cnn.py --bits 8 --out examples/qonnx/cnn_w8a8.onnx
	$(PY) examples/brevitas_cnn.py --bits 4 --out examples/qonnx/cnn_w4a4.onnx

sweep: $(STAMP)
	$(PY) -m quantize.sweep --checkpoint model/checkpoints/lenet5.pt --jobs $(JOBS) --out build/reports/sweep \
	  --executor $(EXECUTOR) $(if $(SCHEDULER),--scheduler $(SCHEDULER))

bench-dask: $(STAMP)
	$(PY) -m tasks.bench --jobs $(JOBS)

# hardware design-space exploration: hw/explore.py's default grid (docs/cluster.md); EXPLORE_ARGS e.g.
# "--grid my-grid.json" or "--sim-images 1000"
explore: build/quant/lenet5-q8/spec.json build/quant/lenet5-anna/spec.json
	$(PY) -m hw.explore --out build/reports/explore --jobs $(JOBS) \
	  --executor $(EXECUTOR) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(EXPLORE_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf build

sim-layers: $(STAMP)
	$(PY) -m sim.layers
