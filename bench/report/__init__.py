"""Reports: a pure function of a profile's run records.

``summarize`` reads every run of the grid into one tidy DataFrame (one row per run);
``main_table`` aggregates it per configuration (mean ± sd over seeds); ``write_report`` writes
``results/P/summary.csv``, ``reports/P.md`` / ``.csv`` / ``.tex`` and the figures in
``reports/P/``. Nothing here trains, evaluates or reads the clock.

One idea per module: ``records`` (run records → summary, the regression frame), ``tables``
(per-configuration tables and markdown), ``paired`` (the paired comparison and its generated
reading), ``figures``, ``timing`` (the throughput section), ``document`` (the report itself).
"""

from .document import render, write_report
from .figures import figures, trajectories_figure
from .paired import PAIRED, paired_differences, paired_table, reading
from .records import (
    PRINTED,
    REGRESSION_COLUMNS,
    TIMING,
    largest_differences,
    load_run,
    regression_frame,
    summarize,
)
from .tables import (
    MAIN_COLUMNS,
    STAGE_COLUMNS,
    TITLES,
    config_name,
    main_table,
    markdown,
    published_table,
    reference_section,
    stage_table,
)
from .timing import throughput_section

__all__ = ["MAIN_COLUMNS", "PAIRED", "PRINTED", "REGRESSION_COLUMNS", "STAGE_COLUMNS", "TIMING",
           "TITLES", "config_name", "figures", "largest_differences", "load_run", "main_table",
           "markdown", "paired_differences", "paired_table", "published_table", "reading",
           "reference_section", "regression_frame", "render", "stage_table", "summarize",
           "throughput_section", "trajectories_figure", "write_report"]
