"""vae-bench harness: configuration, data, training, metrics, results and reports.

Importing it first decides the process's numerics mode, before torch loads (``bench.machine.numerics``).
"""

from .machine import numerics as _numerics

try:
    _numerics.prepare()
except ValueError:  # a bad VAE_BENCH_NUMERICS: the CLI says so in one line
    pass
