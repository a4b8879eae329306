# make demo : set up .venv on a fresh machine and run the CPU demo of the pipeline
# make test : set up (or reuse) .venv and run the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= runs/demo

.PHONY: setup demo demo-quick test bench clean system-deps

$(STAMP): pyproject.toml constraints/cpu.txt
	@$(MAKE) --no-print-directory system-deps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[dev,ray]"
	touch $(STAMP)

setup: $(STAMP)

# bubblewrap is the code sandbox (openk1/sandbox/); skipped quietly where apt is unavailable
system-deps:
	@command -v bwrap >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || \
	  echo "note: install bubblewrap (apt-get install bubblewrap) for the code sandbox"; }

demo: $(STAMP)
	$(BIN)/openk1 demo --out $(OUT) --overwrite

demo-quick: $(STAMP)
	$(BIN)/openk1 demo --quick --out $(OUT)-quick --overwrite

test: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/rl_iteration_time.py

clean:
	rm -rf $(VENV) runs
