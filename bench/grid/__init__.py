"""Runs and grids of runs: one run in stages (``runner``), a profile's configurations x seeds
(``profile``), the suite with resume (``suite``) on a backend (``backends``: in-process, a
process pool, Ray), and the evaluations attached to finished runs (``attached``: AIS records)."""
