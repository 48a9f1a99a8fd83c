.PHONY: demo test bench bench-quick

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

# Benchmarks (bench/README.md): installs the baselines' venvs (once), then overhead, data
# movement and recovery, each printing its table and writing bench/results/*.json. Full mode
# first waits (bounded) for a quiet machine: BENCH_MAX_LOAD= (empty) to skip the wait. Only
# before the first script: afterwards the load average mostly counts our own previous script.
BENCH_MAX_LOAD ?= 1.5
BENCH_MAX_WAIT ?= 180
BENCH_LOAD = $(if $(BENCH_MAX_LOAD),--max-load $(BENCH_MAX_LOAD) --max-wait $(BENCH_MAX_WAIT))

bench:
	bash scripts/setup.sh
	python3 bench/baselines/setup.py
	python3 bench/overhead.py $(BENCH_LOAD)
	python3 bench/dataflow.py
	python3 bench/recovery.py

bench-quick:
	python3 bench/baselines/setup.py
	python3 bench/overhead.py --quick
	python3 bench/dataflow.py --quick
	python3 bench/recovery.py --quick
