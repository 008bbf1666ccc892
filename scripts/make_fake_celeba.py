#!/usr/bin/env python
"""Thin wrapper of ``mtbench-fake celeba`` (:mod:`mtbench.data.fake.celeba`), kept for old command lines:

python scripts/make_fake_celeba.py --root DIR --n N   # = mtbench-fake celeba --root DIR --n N
"""

from __future__ import annotations

import sys

from mtbench.data.fake.celeba import *  # noqa: F401,F403 - the writer's functions, for importers of this file
from mtbench.data.fake.celeba import main

if __name__ == "__main__":
    sys.exit(main())
