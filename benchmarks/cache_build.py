"""Time building the FER2013 train preprocessing cache from scratch; prints JSON {images, seconds, images_per_s}.

Usage: python benchmarks/cache_build.py [FER2013_ROOT]   (default ../shared/data/fer2013)
The cache goes to a temporary PRIVFER_CACHE that is deleted afterwards.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"
    with tempfile.TemporaryDirectory(prefix="privfer-bench-") as tmp:
        os.environ["PRIVFER_CACHE"] = tmp
        from privfer.data.cache import load_faces

        t0 = time.perf_counter()
        fs = load_faces(f"fer2013:{root}@train")
        seconds = time.perf_counter() - t0
    print(json.dumps({"images": len(fs), "seconds": round(seconds, 3), "images_per_s": round(len(fs) / seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
