.PHONY: demo test bench bench-quick

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

# Benchmarks (bench/README.md): installs the bench extra (matplotlib) and the baselines' venvs
# (once), then every workload of issue #5 measured here (overhead, data movement, checkpoint
# throughput, recovery 1k -> 10k, 100k-task scale, ML pipeline, reservation), each printing its table and writing
# bench/results/*.json, then the plots (results/*.png) and ONE table of every target
# (bench/report.py). Full mode first waits (bounded) for a quiet machine: BENCH_MAX_LOAD=
# (empty) to skip the wait. Only before the first script: afterwards the load average mostly
# counts our own previous script. bench-quick: smaller sizes, one repeat, a few minutes;
# its results go to bench/results/quick (never over the figures README quotes). A script that
# fails (e.g. Ray cannot start on an overloaded machine) does not stop the others: the final
# table shows its targets as "not run".
BENCH_MAX_LOAD ?= 1.5
BENCH_MAX_WAIT ?= 180
BENCH_LOAD = $(if $(BENCH_MAX_LOAD),--max-load $(BENCH_MAX_LOAD) --max-wait $(BENCH_MAX_WAIT))
BENCH_EXTRA = python3 -c 'import matplotlib, numpy' 2>/dev/null || \
	PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet --no-input -e ".[bench]"

bench:
	bash scripts/setup.sh
	$(BENCH_EXTRA)
	python3 bench/baselines/setup.py
	-python3 bench/overhead.py $(BENCH_LOAD)
	-python3 bench/dataflow.py
	-python3 bench/checkpoint.py
	-python3 bench/recovery.py --tasks 1000,10000 --baseline-tasks 1000
	-python3 bench/scale.py
	-python3 bench/ml_pipeline.py
	-python3 bench/reservation.py
	-python3 bench/cells.py
	python3 bench/plots.py
	python3 bench/report.py

bench-quick: export BENCH_RESULTS = $(CURDIR)/bench/results/quick
bench-quick:
	$(BENCH_EXTRA)
	python3 bench/baselines/setup.py
	-python3 bench/overhead.py --quick
	-python3 bench/dataflow.py --quick
	-python3 bench/checkpoint.py --quick
	-python3 bench/recovery.py --quick
	-python3 bench/scale.py --quick
	-python3 bench/ml_pipeline.py --quick
	-python3 bench/reservation.py --quick
	-python3 bench/cells.py --quick
	python3 bench/plots.py
	python3 bench/report.py
