# Two entry points that work on a fresh machine: `make pegasus` and `make test`.
# Both create .venv when missing and install the package (with test tools) into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SHARED_CIFAR := ../shared/data/cifar10-jpeg.tar.gz
DATA := data

.PHONY: setup test pegasus data bench evaluator report clean-runs

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# CIFAR-10: the shared JPEG copy when it is beside the checkout, else torchvision's download.
data: $(STAMP)
	@if [ -d $(DATA)/cifar10-jpeg ] || [ -d $(DATA)/cifar-10-batches-py ]; then :; \
	elif [ -f $(SHARED_CIFAR) ]; then mkdir -p $(DATA) && tar xzf $(SHARED_CIFAR) -C $(DATA); \
	else $(PY) -m autoencoder.data --data $(DATA) --download true; fi

test: $(STAMP)
	$(PY) -m pytest -q tests

# Until a shipped model exists (a later issue), this trains a short demo run and says so,
# then composes horse+wings with it.
DEMO_RUN := outputs/runs/demo-$(shell date +%Y%m%d-%H%M%S)
pegasus: data
	@echo "pegasus: no shipped model yet, so this trains a short demo run first (about 4 minutes in all on 2 CPU cores);"
	@echo "pegasus: a demo run is far from the trained model: expect blurry images."
	$(PY) -m autoencoder.train --preset cpu --data $(DATA) --steps 400 --sample_every 400 \
		--log_every 100 --eval_images 1000 --out $(DEMO_RUN)
	$(PY) -m latent_ops.compose horse+wings --run $(DEMO_RUN) --data $(DATA)

# The evaluator classifier (trained from scratch, about 25 min on 2 CPU cores); the committed one is in
# autoencoder/weights/evaluator/. This retrains it and replaces the committed copy.
evaluator: data
	$(PY) -m autoencoder.train_evaluator --data $(DATA) --out outputs/evaluator/main \
		--ship autoencoder/weights/evaluator

# The evaluation report of a run (default: the newest in outputs/runs): make report RUN=outputs/runs/NAME
report: data
	$(PY) -m latent_ops.report --data $(DATA) $(if $(RUN),--run $(RUN),)

bench: $(STAMP)
	$(PY) bench/train_throughput.py --preset cpu

clean-runs:
	rm -rf outputs/runs
