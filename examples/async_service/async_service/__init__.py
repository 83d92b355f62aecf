"""An async invoicing service: the 12-factor shape real apps have (engine from DATABASE_URL at import)."""
