#!/usr/bin/env python3
"""Write the bundled model's held-out split (the same files as tools/train/train.py
holds out: 5% of the Python standard library by a hash of each path) as one
text file, for `layerskip eval`. Standard library only.

    python3 tools/heldout_text.py > /tmp/heldout.txt
    layerskip eval --file /tmp/heldout.txt --quantize int8
"""
import hashlib
import sys
import sysconfig
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else sysconfig.get_paths()["stdlib"])
for p in sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file()):
    rel = str(p.relative_to(root))
    if int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 100 < 5:
        try:
            sys.stdout.write(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            pass
