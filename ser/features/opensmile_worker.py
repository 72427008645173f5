"""openSMILE functionals computed in a child process of their own.

openSMILE's native library corrupts the heap ("malloc(): invalid size") when it runs
in a process that has imported TensorFlow, which every training, evaluation and
serving process does. So the ``egemaps`` and ``compare`` extractors send each wave
to one long-lived child (``python -m ser.features.opensmile_worker``, which never
imports TensorFlow) over pipes and read the functionals back.

Protocol, per request: one JSON line ``{"feature_set", "sample_rate", "samples"}``
then ``samples`` float32 values (4 bytes each); per reply: one JSON line, either
``{"dims": D}`` followed by D float32 values, or ``{"error": "..."}``.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import threading
from typing import BinaryIO

import numpy as np


class OpenSMILEError(ValueError):
    """openSMILE could not process a wave (or its process died): that file fails, the
    next request starts a new process."""


MISSING = "opensmile-missing"


class OpenSMILEProcess:
    """The child process, started on first use; one request at a time (thread-safe)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "ser.features.opensmile_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return self._proc

    def functionals(self, wave: np.ndarray, sample_rate: int, feature_set: str) -> np.ndarray:
        """float32 [D] functionals of mono ``wave``; raises ``OpenSMILEError``."""
        data = np.ascontiguousarray(wave, dtype="<f4").tobytes()
        head = {
            "feature_set": feature_set,
            "sample_rate": int(sample_rate),
            "samples": len(data) // 4,
        }
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(head).encode() + b"\n" + data)
                proc.stdin.flush()
                reply = json.loads(proc.stdout.readline() or b"null")
                if reply is None:
                    raise OSError("no reply")
                if "error" in reply:
                    raise OpenSMILEError(reply["error"])
                values = _read_exactly(proc.stdout, 4 * int(reply["dims"]))
            except (OSError, ValueError) as exc:
                self.close()
                raise OpenSMILEError(f"the openSMILE process failed ({exc})") from None
        return np.frombuffer(values, dtype="<f4").astype(np.float32)

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            raise OSError("reply cut short")
        out += chunk
    return bytes(out)


PROCESS = OpenSMILEProcess()
atexit.register(PROCESS.close)


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    import warnings

    try:
        import opensmile
    except ImportError:
        opensmile = None
    smiles: dict[str, object] = {}
    for line in iter(stdin.readline, b""):
        head = json.loads(line)
        wave = np.frombuffer(_read_exactly(stdin, 4 * head["samples"]), dtype="<f4")
        try:
            if opensmile is None:
                raise OpenSMILEError(MISSING)
            name = head["feature_set"]
            if name not in smiles:
                smiles[name] = opensmile.Smile(
                    feature_set=getattr(opensmile.FeatureSet, name),
                    feature_level=opensmile.FeatureLevel.Functionals,
                )
            with warnings.catch_warnings():  # "Segment too short, filling with NaN"
                warnings.simplefilter("ignore", UserWarning)
                values = smiles[name].process_signal(wave, head["sample_rate"]).to_numpy()
            out = np.ascontiguousarray(values.reshape(-1), dtype="<f4")
            stdout.write(json.dumps({"dims": int(out.shape[0])}).encode() + b"\n" + out.tobytes())
        except Exception as exc:  # reported to the parent, which raises it there
            stdout.write(json.dumps({"error": str(exc) or type(exc).__name__}).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
