"""The variant comparison as a benchmark: train and evaluate the four variants over several seeds.

    python benchmarks/compare_variants.py [--preset cpu|gpu|smoke] [--seeds 0 1 2] [key=value ...]

The work is done by ``mgrpo_ref.compare`` (its tables by ``mgrpo_ref.compare_tables``, its
figures by ``mgrpo_ref.compare_plots``; notebook 06 imports all three); see its docstring for
what is written where.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mgrpo_ref.compare import main  # noqa: E402

if __name__ == "__main__":
    main()
