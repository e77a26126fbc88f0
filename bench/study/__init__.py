"""Running studies: the storage a study lives in (SQLite, journal files, PostgreSQL), the
ledger (the only code that writes a study), one trial, a grid sweep with its local workers, and
an Optuna search.

May import: everything below it (base, config, data, spec, the measuring core, report). The
storage and ledger are torch-free, so reports load no torch.
"""
