"""The external contract: CloudEvents envelope and event data models.

`schemas.contract` holds the models and topic names, `schemas.envelope` the
CloudEvents codec, `schemas.limits` every bound they check (and
`header_problem` for Kafka headers), `schemas.export` the JSON Schema files in
`schemas/json/`.
"""
