"""Where org vaults are kept: the storage interface (interface.py) that the
vault's operations call, and its SQLite implementation (sqlite/)."""
