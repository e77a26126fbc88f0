"""Running studies: the storage a study lives in (``storage``: SQLite, PostgreSQL, URLs shown
without passwords; ``journal``: journal files checked and repaired), the ledger (``ledger``, the
only code that writes a study, over ``queries``: SQL fast paths or Optuna's storage API, and
heartbeats), the run context handed down (``context``), one trial (``trials``), a grid sweep
(``runner``) and its local workers (``workers``), an Optuna search (``search``), and reports from
the ledger (``stored_reports``, which hands records to bench.report), artifacts any worker reaches
(``artifacts``) and a study grown seed by seed (``grow``).

May import: everything below it (base, config, data, spec, the measuring core, report). The
storage, journal, queries and ledger are torch-free, so reports load no torch.
"""
