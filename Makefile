# Two entry points: `make demo` (the main job) and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test bench bench-codec bench-formats fashion-mnist data venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[demo,test,bench]'
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package; installed when we can
# (root with apt), otherwise the tests that need it are skipped and say so.
data:
	@if [ ! -f $(FMNIST)/t10k-labels-idx1-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: could not install dataset-fashion-mnist; its tests will be skipped"; \
	fi

demo: $(VENV)/.installed
	$(VENV)/bin/xorsparse demo

test: $(VENV)/.installed data
	$(PY) -m pytest

bench-codec: $(VENV)/.installed
	$(PY) -m xorsparse.bench codec --json docs/bench-codec.json

bench-formats: $(VENV)/.installed
	$(PY) -m xorsparse.bench formats --json docs/bench-formats.json --plot docs/bench-formats.png

fashion-mnist: $(VENV)/.installed data
	$(PY) examples/fashion_mnist.py --results docs/RESULTS.md

bench: bench-codec bench-formats

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
