"""A tiny finance app on the finance-report schema, to show how finreport-testdb is used."""
