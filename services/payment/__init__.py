"""The payment service: authorizations through a gateway, never twice."""
