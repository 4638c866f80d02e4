"""The saga's participant services: inventory, payment and orders."""
