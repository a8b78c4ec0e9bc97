#!/usr/bin/env python
"""Check a shard directory and print its statistics: `distill-inspect` from a checkout.

    python tools/inspect_shards.py DIR [--verify] [--decode N] [--seq-len 128 512]

The flags and the logic live in distill.inspect_shards (`--help` lists them).
"""
import sys

from distill.inspect_shards import main

if __name__ == "__main__":
    sys.exit(main())
