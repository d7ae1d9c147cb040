# The two commands of the README:
#   make demo   set up (if needed) and run the closed-loop demo
#   make test   set up (if needed) and run the test suite
# Both are safe to run again: set-up is idempotent and takes < 1 s when nothing changed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Nothing leaves this machine: localhost-only discovery, a domain of our own, logs in build/.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 42
export ROS_LOG_DIR ?= $(CURDIR)/build/ros_log
export FASTRTPS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds.xml
PYTEST_ARGS ?=

.PHONY: setup demo test llama mlx bench-memory bench-recall clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m aura_ros.tools.cli demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Opt-in: the llama.cpp backend (GGUF models, model.backend llama_cpp). llama-cpp-python has no
# binary wheel for this platform, so the first install compiles llama.cpp: measured 30 minutes
# wall (12 CPU-minutes) on a 2-core machine shared with other jobs, a few minutes on an idle
# multi-core one. pip caches the built wheel; later installs take seconds.
llama: setup
	$(PY) -m pip install "llama-cpp-python==0.3.36"

# Opt-in: the MLX backend (model.backend mlx): binary wheels, seconds to install. On Linux MLX
# runs on the CPU wheel (the mlx-cpu package, pulled by the extra mlx[cpu]); macOS gets Metal.
mlx: setup
	if [ "$$(uname -s)" = Darwin ]; then \
	  $(PY) -m pip install "mlx==0.32.4" "mlx-lm==0.32.2"; \
	else \
	  $(PY) -m pip install "mlx[cpu]==0.32.4" "mlx-lm==0.32.2"; \
	fi

bench-memory: setup
	$(PY) -m aura_ros.tools.cli bench memory $(BENCH_ARGS)

bench-recall: setup
	$(PY) -m aura_ros.tools.cli bench recall $(BENCH_ARGS)

clean:
	rm -rf build install log
