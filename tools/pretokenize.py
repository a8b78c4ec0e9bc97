#!/usr/bin/env python
"""Tokenize raw text into distill token shards: `distill-pretokenize` from a checkout.

    python tools/pretokenize.py --tokenizer_name assets/teacher --input corpus/ --output_dir shards/

The flags (PretokenizeConfig) and the logic live in distill.pretokenize (`--help` lists them).
"""
import sys

from distill.pretokenize import main

if __name__ == "__main__":
    sys.exit(main())
