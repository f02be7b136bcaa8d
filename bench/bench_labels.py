#!/usr/bin/env python
"""The label-engine benchmark (scipy vs C++ vs CUDA); see mud_iknn/benchmark.py or `--help`."""
import sys

from mud_iknn.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
