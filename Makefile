PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
comma := ,
# [crosscheck] (torch + the PyTorch EfficientNet-Lite, for the tests' second reading of the ImageNet checkpoints)
# only where torch's CPU build lies on disk, as on this project's build machines; elsewhere PyPI's torch is a
# CUDA build of several GB, and those tests skip.
EXTRAS := dev$(if $(wildcard /opt/wheels/torch-2.13.0+cpu*),$(comma)crosscheck)

# One stamp per install: re-run pip only when the package metadata changes.
$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

# The real Fashion-MNIST from Debian's package, where apt-get is allowed; the tests do not need it.
datasets:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null 2>&1 \
	      && echo "installed Debian's dataset-fashion-mnist" \
	      || echo "note: Debian's dataset-fashion-mnist could not be installed; 'fashion_mnist' then needs Keras's cache or internet"; \
	  else echo "note: installing Debian's dataset-fashion-mnist needs root and apt-get; skipped"; fi; \
	fi

# Chromium from Debian, where apt-get is allowed, for the test that opens report.html in a real browser
# (driven by playwright from [dev]); without it that test skips and says why.
browser:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (timeout 900 apt-get install -y -q chromium || (apt-get update -q && timeout 900 apt-get install -y -q chromium)) >/dev/null 2>&1 \
	      && echo "installed Debian's chromium" \
	      || echo "note: Debian's chromium could not be installed; the browser test of report.html will skip"; \
	  else echo "note: installing chromium needs root and apt-get; the browser test of report.html will skip"; fi; \
	fi

demo: $(BIN)/.installed datasets
	$(BIN)/python scripts/demo.py

# The demo with the other training images of classes 5-9 as unlabelled images too (pseudo-labels; longer)
demo-semi: $(BIN)/.installed datasets
	$(BIN)/python scripts/demo.py --unlabelled rest --output saved_models/demo-semi

# Everything: lint and format checks, then the whole suite (what CI runs), one worker per core (pytest-xdist;
# each test file stays on one worker, so its module fixtures are built once).
test: $(BIN)/.installed datasets browser lint
	$(BIN)/python -m pytest -n auto --dist loadfile

# The loop to run while working: the suite without the tests marked slow (notebooks, recipes, kill chains,
# subprocess runs, conversions, the browser), one worker per core too.
test-fast: $(BIN)/.installed lint
	$(BIN)/python -m pytest -m "not slow" -n auto --dist loadfile

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: browser datasets demo demo-semi lint test test-fast
