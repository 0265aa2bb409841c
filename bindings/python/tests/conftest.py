"""Makes the in-repo package importable and points it at the cargo build of libmlorc."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PKG_SRC = HERE.parent / "src"
REPO = HERE.parent.parent.parent

if str(PKG_SRC) not in sys.path:
    sys.path.insert(0, str(PKG_SRC))

_built = REPO / "target" / "release" / "libmlorc.so"
if not os.environ.get("MLORC_LIBRARY") and _built.is_file():
    os.environ["MLORC_LIBRARY"] = str(_built)

# The problems here are tiny: more threads only add synchronisation, and torch's OpenMP
# threads spin-wait, which makes a loaded 2-core machine 100x slower. One torch thread; the
# library's results do not depend on its thread count (MLORC_NUM_THREADS).
os.environ.setdefault("MLORC_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(1)
