"""The database's schema and its migrations: `schema` names every table, `migrate` brings a database to the head."""
