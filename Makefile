# Two commands do all set-up on a fresh machine (Python 3.11 + pip):
#   make train   - creates .venv, installs darkcfg, trains cfg/vgg16.cfg on the embedded data
#   make test    - creates .venv, installs darkcfg + test tools, runs the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned here (not in setup.cfg, which takes ranges) so that pip takes the
# builds that lie on this machine's disk; override with `make TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
OUT ?= runs/vgg16

.PHONY: train test lint bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,detect,export,opencv,video]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python runner.py cfg/vgg16.cfg --train --classes 10 --set width=32 --set height=32 \
		--set batch=32 --set subdivisions=1 --set max_batches=100 --set burn_in=10 \
		--set steps=80 --set scales=0.1 --set hue=0 \
		--set convolutional.batch_normalize=1 --set connected.batch_normalize=1 --out $(OUT)

# a crashed worker is replaced (xdist stops at 8, and its INTERNALERROR hides every result)
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --max-worker-restart=40 --durations=20 tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/parse.py
	$(BIN)/python bench/model.py
	$(BIN)/python bench/check.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
