#!/usr/bin/env python3
"""Regenerate contracts/artifacts/ from contracts/sol/ (solc pinned in contracts/_compile.py).

Usage: scripts/compile_contracts.py [--check]
  --check  compile and compare with the committed artifacts; exit 1 if they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from contracts import _compile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        compiled = _compile.compile_all()
    except _compile.CompileError as exc:
        print(f"compile failed:\n{exc}", file=sys.stderr)
        return 2
    fp = _compile.fingerprint()
    if args.check:
        stale = []
        for name, c in compiled.items():
            path = _compile.ARTIFACTS_DIR / f"{name}.json"
            if not path.exists() or json.loads(path.read_text()) != _compile.artifact_json(c, fp):
                stale.append(name)
        extra = {p.stem for p in _compile.ARTIFACTS_DIR.glob("*.json")} - set(compiled)
        if stale or extra:
            print(f"stale artifacts: {sorted(stale)} extra: {sorted(extra)}; run scripts/compile_contracts.py",
                  file=sys.stderr)
            return 1
        print(f"artifacts current ({len(compiled)} contracts, {time.perf_counter() - started:.1f} s)")
        return 0
    for path in _compile.write_artifacts(compiled):
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    print(f"compiled {len(compiled)} contracts in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
