"""Process-wide settings that make CPU feature extraction and inference fast.

``tune_for_inference()`` is called once at start-up by every command that analyses audio
while it serves or predicts (``ser serve``, ``ser predict``, ``ser record``, the
benchmarks); feature-extraction workers call ``limit_blas_threads`` and
``keep_freed_memory`` themselves. Each returns quietly where it does not apply.
"""

from __future__ import annotations


def limit_blas_threads(threads: int = 1) -> None:
    """Cap NumPy's BLAS pool for the rest of the process.

    Feature extraction does small matrix products (filterbank x spectrogram); with
    the BLAS pool spinning on cores that TensorFlow or other requests are using,
    one 3 s clip measured 55 ms instead of 1 ms. Servers and CLIs that extract
    features while a model runs call this once at start-up.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


# glibc's mallopt parameters and the values ``keep_freed_memory`` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 4 << 20
_TRIM_THRESHOLD_BYTES = 64 << 20


def keep_freed_memory() -> bool:
    """Make glibc's allocator keep freed memory for reuse instead of returning it to the
    system after every request; False where there is no glibc (nothing changed).

    A clip's analysis allocates a few arrays of about 1-2 MB (frames, spectra). By
    default glibc serves such sizes with fresh ``mmap`` pages, or trims them off the
    heap when freed, so every request pays page faults on them: measured on a 3 s clip,
    a batch FFT took 2.0-2.5 ms instead of 0.5 ms, and content, order or shape decided
    which. With blocks up to 4 MB taken from the heap and up to 64 MB of free heap kept,
    the pages are faulted in once. Larger blocks (a long upload's samples) still come
    from ``mmap`` and go back to the system when freed, so a flood of large uploads
    leaves no more memory held than before. Called once by ``ser serve``, ``ser predict``,
    ``ser record``, the feature-extraction workers and the benchmarks.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    )


def tune_for_inference() -> None:
    """One BLAS thread and an allocator that keeps freed memory (see each)."""
    limit_blas_threads()
    keep_freed_memory()
