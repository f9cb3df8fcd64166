"""Hostile inputs shared by the tests that throw them at the CLI (tests/test_attack_matrix.py and the tests of
each defence): a YAML alias bomb, and a trainer plug-in that dies in every way a worker can."""

from __future__ import annotations

import textwrap

BOMB = """name: bomb
source: {dataset: glyphs}
target: {dataset: mnist5k}
trainer:
  function: os:getcwd
  options:
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


TRAINER_SOURCE = textwrap.dedent('''
    import os
    import signal
    import sys
    import time

    import numpy as np


    def fine(job):
        return job.mask[:5].astype(float) - 0.5 + 0.01 * job.index


    def _poisoned(job):
        return job.index == job.options["dies_on"] and os.path.exists("POISON")


    def raises(job):
        if _poisoned(job):
            raise ValueError("the loss exploded")
        return fine(job)


    def exits(job):
        if _poisoned(job):
            sys.exit(3)
        return fine(job)


    def os_exits(job):
        if _poisoned(job):
            os._exit(0)
        return fine(job)


    def segfaults(job):
        if _poisoned(job):
            os.kill(os.getpid(), signal.SIGSEGV)
        return fine(job)


    def hangs(job):
        if _poisoned(job):
            time.sleep(1000)
        return fine(job)
''')
