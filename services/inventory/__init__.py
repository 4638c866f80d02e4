"""The inventory service: products, stock and soft holds."""
