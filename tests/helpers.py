"""Small sample factories for tests that need shards but not the synthetic corpus."""

from __future__ import annotations

import io
import socket

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def image_bytes(color=(200, 30, 30), size=32, fmt="PNG") -> bytes:
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = color
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def sample(i: int, size=32, fmt="png") -> dict:
    name = list(COLORS)[i % len(COLORS)]
    return {"__key__": f"{i:06d}", fmt: image_bytes(COLORS[name], size, "JPEG" if fmt == "jpg" else fmt.upper()),
            "txt": f"a {name} square number {i}"}


def free_port() -> int:
    """A free loopback port (tests' servers and rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
