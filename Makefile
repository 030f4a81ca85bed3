# recon-streams: the two commands are `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install clean bench fuzz soak bench-backpressure

# `make bench` runs in its own venv: Quix Streams (a contender) pins an older confluent-kafka.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

$(BENCH_STAMP): pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV) || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	@touch $(BENCH_STAMP)

# Throughput, memory and latency of every contender on one broker; writes bench/results.md.
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.run $(BENCH_ARGS)

demo: $(STAMP)
	$(BIN)/recon demo

lint: $(STAMP)
	$(BIN)/ruff check streams processors tests bench
	$(BIN)/ruff format --check streams processors tests bench
	$(BIN)/mypy streams processors

format: $(STAMP)
	$(BIN)/ruff format streams processors tests bench
	$(BIN)/ruff check --fix streams processors tests bench

test: $(STAMP) lint
	$(BIN)/python -m pytest

# Longer fuzzing (not part of `make test`): the Hypothesis `fuzz` profile (FUZZ_EXAMPLES per
# test), then the atheris harness for FUZZ_SECONDS if atheris installs from a wheel (optional).
FUZZ_EXAMPLES ?= 3000
FUZZ_SECONDS ?= 120
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz RECON_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/processors/test_fuzz.py
	@$(BIN)/python -c "import atheris" 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet --only-binary=:all: 'atheris>=2.3,<4' \
		|| echo "note: no atheris wheel for this Python/platform; the atheris harness will be skipped"
	@mkdir -p build
	@echo "atheris harness for $(FUZZ_SECONDS)s (libFuzzer output in build/fuzz-atheris.log)"
	@$(BIN)/python -m tests.fuzz.atheris_harness -max_total_time=$(FUZZ_SECONDS) \
		> build/fuzz-atheris.log 2>&1; status=$$?; \
		grep -E "^(note|Done|==[0-9]+== ERROR|INFO: Seed)|DONE|Traceback|Error" build/fuzz-atheris.log; \
		exit $$status

# Resource bounds under a flood of poison pills and valid events (not part of `make test`):
# embedded broker + one worker + slow sim:// downstream, RSS sampled every second (~2 min).
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# The downstream latency spike, adaptive backpressure on and off (~3 min): prints the figures
# and draws bench/backpressure.png (docs/backpressure.md). Not part of `make test`.
BACKPRESSURE_ARGS ?=
bench-backpressure: $(STAMP)
	$(BIN)/python -m bench.backpressure $(BACKPRESSURE_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache recon.db
