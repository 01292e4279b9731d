"""The client role: sealing stores, ephemeral keys for retrievals, the
transports to the server role, remote login and pins, and offline copies.
Imported on every retrieval: nothing here."""
