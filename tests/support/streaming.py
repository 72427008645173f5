"""Drive the live ``/stream`` WebSocket of a test client with 16-bit PCM in one go."""

from __future__ import annotations

import json

import numpy as np


def stream_replies(client, wave: np.ndarray) -> list[dict]:
    """Every reply ``/stream`` sends for ``wave`` (float samples at 16 kHz, ±1) sent as
    one block of 16-bit PCM and then ``end``: everything after ``ready``, up to ``end``."""
    pcm = (wave * 32767).astype("<i2")
    with client.websocket_connect("/stream") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(pcm.tobytes())
        ws.send_text(json.dumps({"type": "end"}))
        replies = []
        while (reply := ws.receive_json())["type"] != "end":
            replies.append(reply)
    return replies
