"""The per-input bound of the property-based fuzz tests (``tests/test_fuzz_*.py``): one input's CPU time, wall time
and Python heap at its peak, so that an input that makes a reader blow up fails the test.

What one input is charged with is what that input costs: the reader's computation and its allocations. Not the
collector's work on the rest of the process. Automatic garbage collection is off while the input runs and back on
afterwards, so the garbage an input makes, cyclic or not, stays in ``tracemalloc``'s peak (a blow-up in garbage
fails the memory bound, more strictly than if it were collected halfway) and is collected between inputs.

Why, measured: in a full CI run one input of ``test_verify_over_a_replaced_file`` (0.07 s of CPU on its own) was
charged 5.4-6.1 s, all of it one full collection freeing 1,580,951 objects that earlier inputs had left in
reference cycles (an exception's traceback holds the frame that holds the exception). The fixture then in use
froze the test process's heap (``gc.freeze``) to keep pytest's own objects out of the collector's way; CPython
starts a full collection when the objects promoted since the last one exceed a quarter of the heap it counted
then, which the freeze left at the whole pre-freeze heap. After the build and boot tests that heap is large, so
cyclic garbage piled up over thousands of inputs and was freed inside one input's window.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

from imagectl.errors import ImagectlError

# CPU seconds of this process (what a blow-up costs; other processes on a shared 2-core machine do not count:
# wall-clock bounds failed here under load, 5.3 s for an input that takes 0.1 s), and a wall-clock bound far above
# it for an input that blocks instead of computing.
CPU_LIMIT = 5.0
WALL_LIMIT = 60.0

T = TypeVar("T")


def bounded(call: Callable[[], T], *, memory_limit: int) -> T | ImagectlError:
    """Run one input's ``call`` within the bounds; return its result or the ``ImagectlError`` it raised.

    Any other exception propagates (Hypothesis shows it, shrunk, with its traceback). The caller checks what an
    ``ImagectlError`` must say."""
    collecting = gc.isenabled()
    gc.disable()
    tracemalloc.start()
    start, cpu_start = time.monotonic(), time.process_time()
    try:
        result: T | ImagectlError = call()
    except ImagectlError as e:
        result = e
    finally:
        took, cpu = time.monotonic() - start, time.process_time() - cpu_start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if collecting:
            gc.enable()
    assert cpu < CPU_LIMIT, f"one input took {cpu:.1f} s of CPU"
    assert took < WALL_LIMIT, f"one input took {took:.1f} s"
    assert peak < memory_limit, f"one input peaked at {peak / 2**20:.1f} MiB"
    return result
