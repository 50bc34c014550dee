# Two commands on a fresh machine: `make demo` (simulation report with plots) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo
DEMO_TRACE := simulations/data/azure_conv_2023.csv

.PHONY: demo test bench native clean

$(BIN)/vllm-autoscaler: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,native]'
	touch $@

# The simulator's engine compiled with mypyc (~1.7x faster; simulations/native.py); a no-op
# when the compiled copy already matches simulations/engine.py.
native: $(BIN)/vllm-autoscaler
	$(BIN)/python -m vllm_autoscaler.simulations.build_native

demo: native
	$(BIN)/vllm-autoscaler simulate --trace $(DEMO_TRACE) --policy controller --out $(OUT)
	$(BIN)/vllm-autoscaler compare --trace $(DEMO_TRACE) --out $(OUT)/compare \
		--policies controller,hpa,hpa:target_average=10,modal-only,static-peak,oracle
	@echo "report: $(OUT)/report.md, comparison: $(OUT)/compare/compare.png"

test: native
	bash tests/setup_real_parts.sh
	$(BIN)/python -m pytest

bench: native
	for b in tests/benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-vllm out .cache simulations/_engine_native*.so
