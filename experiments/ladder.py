#!/usr/bin/env python
"""Run a CLIP compute ladder: `python experiments/ladder.py [--config YAML] [key=value ...]`.

With no arguments it runs experiments/configs/tiny.yaml on a local Ray with a
synthetic corpus and MLflow in ./mlflow.db. On a cluster:
`ray job submit --working-dir . -- python experiments/ladder.py --config ...`.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from clipscale.ladder_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_config=os.path.join(HERE, "configs", "tiny.yaml")))
