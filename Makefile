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

.PHONY: setup demo test bench-memory bench-recall clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m aura_ros.tools.cli demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench-memory: setup
	$(PY) -m aura_ros.tools.cli bench memory $(BENCH_ARGS)

bench-recall: setup
	$(PY) -m aura_ros.tools.cli bench recall $(BENCH_ARGS)

clean:
	rm -rf build install log
