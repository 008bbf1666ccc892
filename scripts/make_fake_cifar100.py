#!/usr/bin/env python
"""Thin wrapper of ``mtbench-fake cifar100`` (:mod:`mtbench.data.fake.cifar100`), kept for old command lines:

python scripts/make_fake_cifar100.py --root DIR --n N   # = mtbench-fake cifar100 --root DIR --n N
"""

from __future__ import annotations

import sys

from mtbench.data.fake.cifar100 import *  # noqa: F401,F403 - the writer's functions, for importers of this file
from mtbench.data.fake.cifar100 import main

if __name__ == "__main__":
    sys.exit(main())
