#!/usr/bin/env python
"""Check a shard directory and print its statistics: `distill-inspect` from a checkout.

    python tools/inspect_shards.py DIR [--verify] [--decode N] [--max_seq_length 128 512]

The flags (InspectConfig) and the logic live in distill.inspect_shards (`--help` lists them).
"""
import sys

from distill.inspect_shards import main

if __name__ == "__main__":
    sys.exit(main())
