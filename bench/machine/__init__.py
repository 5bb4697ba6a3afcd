"""What the machine decides and how the suite lives with it: portable numerics (``numerics``),
the global state reset before every run (``isolation``), the memory allocator
(``allocator``), the memory check before a run (``budget``) and Ctrl-C
handling (``interrupt``)."""
