#!/usr/bin/env python
"""Learning-rate sweep with Ray Tune + ASHA, and the rule lr_opt(N) = c * N^-gamma:
`python experiments/sweep_lr.py --config CFG [--rungs 0,1,2,3] [--samples N] [--trials K] [--seed S]
[--lr-range LO,HI] [--dry-run [--json]] [--out FILE] [key=value ...]`.

Writes <config dir>/<ladder>.lr.yaml (or --out), which a ladder names in `ladder.generate.lr_rule`.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from clipscale.sweep_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_config=os.path.join(HERE, "configs", "tiny.yaml")))
