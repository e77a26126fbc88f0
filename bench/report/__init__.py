"""Reports derived from records alone (a DataFrame, one row per trial): ``tables`` (summaries,
comparisons with intervals, iso-cost verdicts, rankings), ``formats`` (every cell and number),
``plots`` (one registry of report.md's plots), ``markdown`` (report.md and runs.csv) and
``fidelity`` (a proxy study against a reference, from two frames).

May import: the base, config and spec layers and the statistics; never torch, never bench.study
(it receives records and writes files; bench.study.stored_reports reads the ledger and hands them over).
"""
