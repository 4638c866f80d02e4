"""The servers the project starts itself when no URL is set: Apache Kafka (or tansu), PostgreSQL, Redis."""
