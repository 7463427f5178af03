"""Run directories: their layout (paths.py), the append-only store (store.py), the manifest (manifest.py) and the
journal of an evolve run, read back for show (journal.py)."""
