# The actor image (CPU): the env loop, gating inference and the spooled gRPC sender, next to the robot.
#   docker build -f docker/actor.Dockerfile -t q2rl-actor .
#   docker run --net host -v $PWD/runs:/q2rl/runs q2rl-actor --config configs/real/peg_insertion.yaml --learner gpu-box:50051
# Real robot: build with `--build-arg EXTRAS=robot` (franky-control, pyrealsense2) and run it in the operator's
# terminal with the robot's real-time needs (the console refuses without -it; libfranka needs real-time priority):
#   docker run -it --net host --privileged --cap-add SYS_NICE --ulimit rtprio=99 --ulimit memlock=-1 \
#       -v $PWD/runs:/q2rl/runs q2rl-actor --config configs/real/peg_insertion.yaml --learner gpu-box:50051
FROM python:3.11-slim-bookworm

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    MUJOCO_GL=egl PYOPENGL_PLATFORM=egl \
    XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 JAX_PLATFORMS=cpu

# The same system libraries as the Makefile's APT_PACKAGES: headless MuJoCo (EGL, OSMesa fallback), libusb; and
# make, which python:*-slim lacks and the install below runs (`make protos`).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      make \
      libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libosmesa6 libglfw3 libusb-1.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /q2rl
# Dependencies first (cached layer): the pins come from pyproject.toml only.
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
RUN pip install --upgrade pip "setuptools>=69" wheel \
 && pip install -e ".${EXTRAS:+[$EXTRAS]}" \
 && make protos PY=python

ENTRYPOINT ["q2rl", "actor"]
