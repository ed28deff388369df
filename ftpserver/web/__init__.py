"""The web side: the same roots, accounts and guarantees over HTTP (browsers, curl, tus clients)."""
