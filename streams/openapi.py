"""The collector's OpenAPI description, generated from the event contract."""

from __future__ import annotations

import copy
from typing import Any

from pipeline.contract import event_json_schema


def submitted_event_schema() -> dict[str, Any]:
    """The event as a source submits it: raw e-mail/phone allowed, no received_at/source."""
    schema = copy.deepcopy(event_json_schema())
    for name in ("$schema", "$id"):
        schema.pop(name, None)
    properties = schema["properties"]
    properties.pop("received_at", None)
    properties.pop("source", None)
    properties["email"] = {
        "type": "string",
        "description": "Raw e-mail address: the collector replaces it by email_hash (keyed HMAC) "
        "before the event leaves it.",
    }
    properties["phone"] = {
        "type": "string",
        "description": "Raw phone number: normalised and replaced by phone_hash.",
    }
    schema["title"] = "SubmittedTouchpointEvent"
    return schema


def openapi_document() -> dict[str, Any]:
    event = submitted_event_schema()
    defs = event.pop("$defs", {})
    error_item = {
        "type": "object",
        "properties": {
            "index": {"type": "integer"},
            "reason": {"type": "string"},
            "field": {"type": "string"},
            "detail": {"type": "string"},
        },
        "required": ["index", "reason", "field", "detail"],
    }
    error = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/ItemError"}},
        },
        "required": ["error"],
    }

    def fix_refs(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else fix_refs(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [fix_refs(v) for v in node]
        return node

    body_schema = {
        "oneOf": [
            {"$ref": "#/components/schemas/SubmittedTouchpointEvent"},
            {"type": "array", "items": {"$ref": "#/components/schemas/SubmittedTouchpointEvent"}},
            {
                "type": "object",
                "properties": {
                    "events": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/SubmittedTouchpointEvent"},
                    }
                },
                "required": ["events"],
            },
        ]
    }

    def response(description: str, schema: str = "Error") -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "journeywatch collector",
            "version": "1",
            "description": "Submit customer touchpoint events. Each accepted event is "
            "acknowledged only after the Kafka broker acknowledged it.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {
            "/v1/events": {
                "post": {
                    "operationId": "submitEvents",
                    "summary": "Submit one event or a batch",
                    "parameters": [
                        {
                            "name": "Content-Encoding",
                            "in": "header",
                            "required": False,
                            "description": "gzip, deflate or identity; the inflated body is held "
                            "to the same size limit as a plain one",
                            "schema": {"enum": ["gzip", "x-gzip", "deflate", "identity"]},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": body_schema},
                            "application/x-ndjson": {
                                "schema": {"type": "string", "description": "One event per line"}
                            },
                        },
                    },
                    "responses": {
                        "202": response("At least one event accepted", "Accepted"),
                        "400": response("No event accepted, or the body is not JSON"),
                        "401": response("Missing or unknown API key"),
                        "403": response("The API key may not send these channels"),
                        "408": response("The whole body did not arrive in time"),
                        "413": response("The body (sent or inflated) or the batch is too large"),
                        "415": response(
                            "Not application/json or application/x-ndjson, or another "
                            "Content-Encoding than gzip, deflate or identity"
                        ),
                        "503": {
                            **response("The broker is unavailable; retry after Retry-After"),
                            "headers": {
                                "Retry-After": {
                                    "description": "Seconds to wait before retrying",
                                    "schema": {"type": "integer"},
                                }
                            },
                        },
                    },
                }
            }
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                **fix_refs(defs),
                "SubmittedTouchpointEvent": fix_refs(event),
                "ItemError": error_item,
                "Error": error,
                "Accepted": {
                    "type": "object",
                    "properties": {
                        "accepted": {"type": "integer"},
                        "rejected": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ItemError"},
                        },
                    },
                    "required": ["accepted", "rejected"],
                },
            },
        },
    }
