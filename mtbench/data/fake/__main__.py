"""``python -m mtbench.data.fake`` is ``mtbench-fake``."""

import sys

from mtbench.data.fake import main

sys.exit(main())
