"""Out: the database (schema, connection, the embedded server) and its writer for signals, executions, positions
and service metrics."""
