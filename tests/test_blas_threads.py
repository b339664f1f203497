"""RECSTREAM_BLAS_THREADS: each worker and API process gives numpy's matrix products that many threads per BLAS
library (recstream.components.limit_blas_threads, called by start_process in both), as the libraries themselves
report it (threadpoolctl); 0 leaves them as they are."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from recstream.components import limit_blas_threads
from tests.conftest import Stack, wait_for

LINE = re.compile(r"matrix products: threads per BLAS library: (.+)")


def _threads() -> list[int]:
    found = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert found, "numpy loads no BLAS library threadpoolctl knows"
    return found


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Each BLAS library at 2 threads (whatever this machine's cores), restored after."""
    np.ones((4, 4)) @ np.ones(4)  # the library loaded and used
    with threadpool_limits(limits=2, user_api="blas"):
        yield


@pytest.mark.usefixtures("two_threads")
def test_a_process_limits_its_blas_threads() -> None:
    assert set(_threads()) == {2}
    line = limit_blas_threads(1)
    assert set(_threads()) == {1}
    assert line.endswith(", ".join(f"openblas {n}" for n in _threads()))


@pytest.mark.usefixtures("two_threads")
def test_zero_leaves_the_librarys_threads() -> None:
    limit_blas_threads(0)
    assert set(_threads()) == {2}


@pytest.mark.integration
def test_the_worker_and_the_api_start_with_one_thread(stack: Stack) -> None:
    """The default (1), as each service process says at start."""
    for service in (stack.worker, stack.api):
        assert service.log_path is not None
        log = service.log_path
        wait_for(lambda log=log: LINE.search(log.read_text(errors="replace")) is not None, 60, f"{service.name}'s line")
        match = LINE.search(log.read_text(errors="replace"))
        assert match is not None
        counts = [int(n) for n in re.findall(r"openblas (\d+)", match.group(1))]
        assert counts and set(counts) == {1}, match.group(0)
