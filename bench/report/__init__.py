"""Reports derived from records alone: the tables (comparisons with intervals, iso-cost
verdicts, fidelity), the plots, and the markdown and CSV files.

May import: the base, config and spec layers; never torch, never bench.study (it receives
records and writes files; bench.study hands them over).
"""
