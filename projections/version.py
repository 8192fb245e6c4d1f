# Bump when any projection DDL or fold logic changes: the tables are then rebuilt on open.
PROJECTION_VERSION = 14
