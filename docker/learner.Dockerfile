# The learner image (CUDA JAX): gRPC service, replay, Q-Estimation and SAC updates, on the GPU box.
#   docker build -f docker/learner.Dockerfile -t q2rl-learner .
#   docker run --gpus all -p 50051:50051 -v $PWD/runs:/q2rl/runs q2rl-learner \
#       --config configs/real/peg_insertion.yaml learner.address=0.0.0.0:50051   (the token: $Q2RL_TOKEN)
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    MUJOCO_GL=egl PYOPENGL_PLATFORM=egl \
    XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2

# Python for the venv, and the Makefile's APT_PACKAGES (the learner imports the sim for config validation).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev make \
      libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libosmesa6 libglfw3 libusb-1.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /q2rl
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md Makefile ./
COPY q2rl/ q2rl/
COPY core/ core/
COPY bc/ bc/
COPY demos/ demos/
COPY robot/ robot/
COPY actor/ actor/
COPY learner/ learner/
COPY protos/ protos/
COPY configs/ configs/
# CUDA JAX through the project's `gpu` extra, so its pin is pyproject's.
RUN pip install --upgrade pip "setuptools>=69" wheel \
 && pip install -e ".[gpu]" \
 && make protos PY=python

EXPOSE 50051
ENTRYPOINT ["q2rl", "learner"]
