"""q2rl: Q-Estimation + Q-Gating for improving a BC policy on a real robot, as an actor-learner system."""

__version__ = "0.1.0"
