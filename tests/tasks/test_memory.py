"""Freed host memory kept in the process: counted in page faults, in fresh interpreters."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

import pcgraph.tasks.memory as memory
from pcgraph.cli import main
from tests.test_cli import DIGITS

# 20 allocations of a 64 MiB tensor (above any mmap threshold glibc adapts to), each written
# through, after 16 to warm up (the heap takes a few to settle); prints the page faults the 20
# took. With "keep" the script keeps freed memory first; with "child" it runs the same loop again
# in a process it starts.
FAULTS = """
import resource, subprocess, sys, torch
import pcgraph
if "keep" in sys.argv:
    print(int(pcgraph.keep_freed_memory()))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    torch.empty(2**24).fill_(1.0)
before = faults()
for _ in range(20):
    torch.empty(2**24).fill_(1.0)
print(faults() - before)
if "child" in sys.argv:
    print(subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True).stdout.split()[-1])
"""
PAGES = 2**26 // resource.getpagesize()  # one tensor's pages


def faults(*flags: str, **variables: str) -> list[int]:
    # without the variables that this process has if a command ran in it before (tests/test_cli.py)
    env = {k: v for k, v in os.environ.items() if k not in memory.ENVIRONMENT} | variables
    out = subprocess.run([sys.executable, "-c", FAULTS, FAULTS, *flags], capture_output=True, text=True,
                         check=True, env=env)
    return [int(n) for n in out.stdout.split()]


def test_freed_blocks_are_reused_without_page_faults():
    (plain,) = faults()
    kept = faults("keep", "child")
    if not kept[0]:
        pytest.skip("the C library is not glibc: nothing to keep")
    assert plain >= 10 * PAGES  # glibc maps and unmaps each block: every page is faulted in again
    assert kept[1] < PAGES  # under one block's pages in 20 allocations: the blocks are reused
    assert kept[2] < PAGES  # a process started from it keeps freed memory too (the environment)
    opted_out = faults("keep", PCGRAPH_KEEP_FREED_MEMORY="0")
    assert opted_out[0] == 0 and opted_out[1] >= 10 * PAGES  # nothing done: glibc's behaviour stays


def test_the_cli_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    assert main(["validate", DIGITS]) == 0
    assert calls == [1]


def test_opting_out_leaves_the_allocator_and_the_environment_alone(monkeypatch):
    for name in memory.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PCGRAPH_KEEP_FREED_MEMORY", "0")
    assert memory.keep_freed_memory() is False
    assert not set(memory.ENVIRONMENT) & set(os.environ)
