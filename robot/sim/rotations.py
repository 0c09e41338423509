"""Small rotation helpers in plain numpy (cheaper than scipy for single 3x3 matrices in the control loop).

Quaternions are (w, x, y, z), MuJoCo's order.
"""

from __future__ import annotations

import numpy as np


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def exp_map(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (Rodrigues)."""
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3) + skew(rotvec)
    k = skew(rotvec / angle)
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def log_map(rot: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation matrix (angle in [0, pi])."""
    cos = np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    axis_unnorm = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    if angle < 1e-6:
        return axis_unnorm / 2.0
    if np.pi - angle < 1e-4:
        # Near pi the antisymmetric part vanishes: read the axis off the symmetric part.
        sym = (rot + np.eye(3)) / 2.0
        i = int(np.argmax(np.diag(sym)))
        axis = sym[:, i] / np.sqrt(max(sym[i, i], 1e-12))
        return axis * angle
    return axis_unnorm * (angle / (2.0 * np.sin(angle)))


def rotz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    w, x, y, z = quat / np.linalg.norm(quat)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw_quat(yaw: float) -> np.ndarray:
    """Quaternion of a rotation by `yaw` about world z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quat_yaw(quat: np.ndarray) -> float:
    """Heading (rotation about z) of a quaternion, for near-upright bodies."""
    w, x, y, z = quat
    return float(np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


def canonical_quat(quat: np.ndarray) -> np.ndarray:
    """The representative with w >= 0 of a quaternion (q and -q are the same rotation)."""
    return -quat if quat[0] < 0 else quat


def rot6d(rot: np.ndarray) -> np.ndarray:
    """Continuous 6-D orientation: the first two columns of the rotation matrix, column after column."""
    return np.concatenate([rot[:, 0], rot[:, 1]])


def rot6d_to_matrix(six: np.ndarray) -> np.ndarray:
    """Inverse of rot6d (Gram-Schmidt, so slightly noisy inputs still give a rotation)."""
    a = six[:3] / np.linalg.norm(six[:3])
    b = six[3:6] - a * np.dot(a, six[3:6])
    b = b / np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=1)


def wrap_angle(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)
