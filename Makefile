# make demo  - set up and run dinosearch on the sample catalogue in data/
# make test  - set up and run the test suite (no network needed)
# make bench - indexing, start-up and serving benchmarks (a benchmark, not a test)
# make bench-scale - the vector index at 1M synthetic rows, then re-indexing 1M real tiny files
#                    (SCALE_ARGS="--n 100000", SCALE_FILES_ARGS="--files 100000" for less)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; set TORCH=torch (or a CUDA build) on machines that want another.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench bench-scale serve clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m dinosearch.demo

# The whole suite takes about 8 minutes on 2 cores; -v shows each test as it passes.
test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -v

bench: $(STAMP)
	$(BIN)/python -m tests.bench.bench $(BENCH_ARGS)
	$(BIN)/python -m tests.bench.load --shape vit-s14 --rate 4 --seconds 20 --burst 48 --queue-size 8 --runs 3
	$(BIN)/python -m tests.bench.video_bench --seconds 20 --shape vit-s14
	$(BIN)/python -m tests.bench.ray_bench
	$(BIN)/python -m tests.bench.eval_bench $(EVAL_BENCH_ARGS)
	$(BIN)/python -m tests.bench.duplicates_bench $(DUP_BENCH_ARGS)

bench-scale: $(STAMP)
	$(BIN)/python -m tests.bench.scale_bench $(SCALE_ARGS)
	$(BIN)/python -m tests.bench.scale_files $(SCALE_FILES_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache build *.egg-info

serve: $(STAMP)
	$(BIN)/dinosearch serve $(SERVE_ARGS)
