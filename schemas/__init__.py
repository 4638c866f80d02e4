"""The external contract: CloudEvents envelope and event data models.

`schemas.contract` holds the models and topic names, `schemas.envelope` the
CloudEvents codec, `schemas.export` the JSON Schema files in `schemas/json/`.
"""
