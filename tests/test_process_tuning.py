"""Process settings for fast CPU inference."""

from __future__ import annotations

import platform

import pytest

from ser.process_tuning import keep_freed_memory, tune_for_inference


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_glibc_keeps_freed_memory() -> None:
    assert keep_freed_memory() is True
    tune_for_inference()  # idempotent, and quiet where it applies


def test_threadpool_is_one_blas_thread_after_tuning() -> None:
    from threadpoolctl import threadpool_info

    tune_for_inference()
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)
