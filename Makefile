# q2rl — the two commands are `make run` and `make test`; each sets up whatever is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(VENV)/bin/pip
STAMP     := $(VENV)/.q2rl-setup
GPU       ?= 0
CONFIG    ?= configs/sim/pick_cube_pixels.yaml
ARGS      ?=
# MuJoCo renders headless through EGL (software on a machine without a GPU); OSMesa is the fallback.
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)
# JAX on a CPU box: no preallocation surprises, quiet logs.
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false
export TF_CPP_MIN_LOG_LEVEL ?= 2

# System libraries: EGL/Mesa for headless MuJoCo rendering, OSMesa fallback, libusb for pyrealsense2.
# A fresh machine may still be running its own apt job at boot: wait for the lock instead of failing.
APT_WAIT     := -o DPkg::Lock::Timeout=300
APT_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libosmesa6 libglfw3 libusb-1.0-0

.PHONY: help setup system-deps protos run test test-fast bench clean

help:
	@echo "make run    - set up, then run a full simulated Q2RL training session (learner + actor over gRPC)"
	@echo "make test   - set up, then run the test suite"
	@echo "make bench  - run the benchmarks under bench/ (each prints a JSON line)"
	@echo "make setup  - create $(VENV) and install everything pinned (GPU=1 for CUDA JAX on the learner box)"
	@echo "make protos - regenerate the gRPC stubs from protos/*.proto"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(wildcard protos/*.proto)
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=69" wheel
	$(PIP) install --quiet -e ".[test]"
	@if [ "$(GPU)" = "1" ]; then $(PIP) install --quiet -e ".[gpu]"; fi
	@grep -q MUJOCO_GL $(VENV)/bin/activate || echo 'export MUJOCO_GL=$${MUJOCO_GL:-egl}' >> $(VENV)/bin/activate
	@$(MAKE) --no-print-directory protos
	@touch $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system libraries:$$missing"; \
	  if [ "$$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else \
	    echo "need root to apt-get install$$missing — install them, then rerun make" >&2; exit 1; fi; \
	  $$SUDO apt-get $(APT_WAIT) update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get $(APT_WAIT) install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

protos:
	@if ls protos/*.proto >/dev/null 2>&1; then \
	  $(PY) -m grpc_tools.protoc -Iq2rl/protos=protos --python_out=. --pyi_out=. --grpc_python_out=. protos/*.proto \
	  && mv -f q2rl/protos/*_pb2*.py* protos/ && rmdir -p q2rl/protos 2>/dev/null; true; \
	fi

run: setup
	$(VENV)/bin/q2rl session --config $(CONFIG) $(ARGS)

test: setup
	$(PY) -m pytest -q --durations=15 $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: setup
	@set -e; for b in bench/*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) build *.egg-info protos/*_pb2*.py*
