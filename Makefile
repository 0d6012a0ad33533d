# speechwire: `make demo` installs everything and runs the demo; `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-real bench bench-serve clean

$(STAMP): pyproject.toml scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0   # CPU wheel; an unpinned torch pulls GBs of CUDA
	$(BIN)/python -m pip install -q -e '.[dev,hf,voices]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/speechwire demo

test: install
	$(BIN)/ruff check src tests benchmarks scripts   # lint first: pyflakes, pycodestyle, import order, absolute imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --maxfail=20 -m "not real and not gpu"

test-real: install
	$(BIN)/python -m pytest -q -m real

bench: install   # the CPU benchmarks whose tables docs/ records: adapters.md, training.md, grid.md, results/speed
	$(BIN)/python benchmarks/adapters.py
	$(BIN)/python benchmarks/train_throughput.py --steps 200 --utts 128
	$(BIN)/python benchmarks/grid_cache.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/asr_speed.py --limit 50 --threads 1
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/asr_speed.py --task st --limit 50 --threads 1 --out docs/results/speed/st
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/transcribe_memory.py --json docs/results/speed/memory_profile.json
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/beam_workers.py --workers 1 2 3 --json docs/results/speed/beam_workers/beam_stage.json

bench-serve: install   # `speechwire serve` load test on the demo's real ASR run at concurrency 1, 4, 16 (docs/serving.md)
	test -f runs/demo-asr/config.yaml || $(BIN)/speechwire demo --limit 3 --out runs/demo-asr --quiet
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/serve_load.py --run runs/demo-asr --threads 1 --concurrency 1 4 16 \
		--json docs/results/speed/serve.json

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
