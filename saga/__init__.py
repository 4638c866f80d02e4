"""The checkout saga: its definition (data), its pure state machine, and the
coordinator that runs it against PostgreSQL and Kafka."""
