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

    segment_responses = {
        "200": response("Accepted (some messages may be listed as rejected)", "SegmentAccepted"),
        "400": response("Malformed, or no message valid: code and message name it", "SegmentError"),
        "401": response("Missing or unknown write key", "SegmentError"),
        "403": response("The key may not send these channels", "SegmentError"),
        "408": response("The whole body did not arrive in time", "SegmentError"),
        "413": response("The body or the batch is too large", "SegmentError"),
        "415": response("Another content type or encoding", "SegmentError"),
        "503": {
            **response("The broker is unavailable; retry after Retry-After", "SegmentError"),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    }
    segment_message = {
        "type": "object",
        "description": "A Segment message (track, page, screen, identify, alias, group): "
        "docs/sources/segment.md says what each field becomes",
        "additionalProperties": True,
    }

    def segment_operation(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "operationId": f"segment_{kind}",
                "summary": f"Segment HTTP tracking API: {kind} (analytics.js: /v1/{kind[0]})",
                "security": [{"segmentWriteKey": []}, {"bearer": []}, {}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": body},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                },
                "responses": segment_responses,
            }
        }

    segment_paths = {
        "/v1/batch": segment_operation(
            "batch",
            {
                "type": "object",
                "properties": {
                    "batch": {"type": "array", "items": segment_message},
                    "sentAt": {"type": "string", "format": "date-time"},
                    "context": {"type": "object"},
                    "writeKey": {"type": "string"},
                },
                "required": ["batch"],
            },
        ),
        **{
            f"/v1/{kind}": segment_operation(kind, segment_message)
            for kind in ("track", "page", "screen", "identify", "alias", "group")
        },
    }

    snowplow_errors = {
        "400": response("Malformed, or no event valid: error names the first event and field"),
        "401": response("Missing or unknown API key (in the path /k/<key>/ or a header)"),
        "403": response("The key may not send these channels"),
        "413": response("The body or the batch is too large"),
        "503": {
            **response("The broker is unavailable; retry after Retry-After"),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    }
    key_in_path = {
        "name": "key",
        "in": "path",
        "required": True,
        "description": "A collector API key, for a tracker that cannot send a key header",
        "schema": {"type": "string"},
    }

    def snowplow_operations(prefix: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
        post = {
            "operationId": f"snowplow_tp2{'_key' if parameters else ''}",
            "summary": "Snowplow tracker protocol: a batch (docs/sources/snowplow.md)",
            "parameters": parameters,
            "security": [] if parameters else [{"bearer": []}, {"apiKey": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "schema": {"type": "string"},
                                "data": {"type": "array", "items": {"type": "object"}},
                            },
                            "required": ["schema", "data"],
                        }
                    },
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            "responses": {
                "200": response(
                    "Accepted (some events may be listed as rejected)", "SnowplowAccepted"
                ),
                **snowplow_errors,
                "415": response("Another content type or encoding"),
            },
        }
        pixel = {
            "operationId": f"snowplow_pixel{'_key' if parameters else ''}",
            "summary": "Snowplow tracker protocol: one event in the query string (the pixel)",
            "parameters": parameters,
            "security": [] if parameters else [{"bearer": []}, {"apiKey": []}],
            "responses": {
                "200": {
                    "description": "Accepted (or skipped): a 1x1 GIF",
                    "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
                },
                **snowplow_errors,
            },
        }
        return {
            f"{prefix}/com.snowplowanalytics.snowplow/tp2": {"post": post},
            f"{prefix}/i": {"get": pixel},
        }

    source_in_path = {
        "name": "source",
        "in": "path",
        "required": True,
        "description": "The source (the API key's name) whose webhook the journeys file "
        "describes under sources.<source>.webhook",
        "schema": {"type": "string"},
    }

    def webhook_operation(parameters: list[dict[str, Any]]) -> dict[str, Any]:
        keyed = len(parameters) > 1
        return {
            "post": {
                "operationId": f"survey_webhook{'_key' if keyed else ''}",
                "summary": "A survey response (Qualtrics, Medallia, Delighted ...) mapped by its "
                "source's webhook in the journeys file to survey.csat / survey.nps "
                "(docs/sources.md)",
                "parameters": parameters,
                "security": [] if keyed else [{"bearer": []}, {"apiKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "description": "The tool's own JSON; the score, respondent, "
                                "time and response id are where the source's webhook says",
                            }
                        }
                    },
                },
                "responses": {
                    "202": response("The response was stored", "WebhookAccepted"),
                    "400": response("Not JSON, or a field unusable: error names its JSON path"),
                    "401": response(
                        "Missing or unknown API key, or a missing or bad signature (when the "
                        "source's webhook names one: HMAC-SHA256 of the body in its header)"
                    ),
                    "403": response(
                        "The key belongs to another source, or may not send the webhook's channel"
                    ),
                    "404": response("The source has no webhook in the journeys file"),
                    "408": response("The whole body did not arrive in time"),
                    "413": response("The body is too large"),
                    "415": response("Not application/json"),
                    "503": {
                        **response("The broker is unavailable; retry after Retry-After"),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                },
            }
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
            },
            **segment_paths,
            **snowplow_operations("", []),
            **snowplow_operations("/k/{key}", [key_in_path]),
            "/v1/webhooks/{source}": webhook_operation([source_in_path]),
            "/k/{key}/v1/webhooks/{source}": webhook_operation([key_in_path, source_in_path]),
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "segmentWriteKey": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "The write key (a collector API key) as the user, no password",
                },
            },
            "schemas": {
                **fix_refs(defs),
                "SubmittedTouchpointEvent": fix_refs(event),
                "ItemError": error_item,
                "Error": error,
                "SegmentAccepted": {
                    "type": "object",
                    "properties": {
                        "success": {"const": True},
                        "accepted": {"type": "integer"},
                        "skipped": {"type": "integer"},
                        "rejected": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ItemError"},
                        },
                    },
                    "required": ["success"],
                },
                "SegmentError": {
                    "type": "object",
                    "properties": {
                        "success": {"const": False},
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "error": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ItemError"},
                        },
                    },
                    "required": ["success", "code", "message"],
                },
                "SnowplowAccepted": {
                    "type": "object",
                    "properties": {
                        "accepted": {"type": "integer"},
                        "skipped": {"type": "integer"},
                        "rejected": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ItemError"},
                        },
                    },
                    "required": ["accepted", "skipped", "rejected"],
                },
                "WebhookAccepted": {
                    "type": "object",
                    "properties": {
                        "accepted": {"const": 1},
                        "event_id": {"type": "string"},
                    },
                    "required": ["accepted", "event_id"],
                },
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


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def customer_timeline_schema() -> dict[str, Any]:
    """The answer of ``GET /api/v1/customers/{identifier}`` (sinks/clickhouse/customers.py)."""
    text, number, when = {"type": "string"}, _nullable("number"), _nullable("string")
    strings = {"type": "array", "items": text}

    def obj(properties: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": properties, "required": sorted(properties)}

    return obj(
        {
            "identifier": {**text, "description": "the key asked for (e-mails, phones hashed)"},
            "person_id": text,
            "customer_id": _nullable("string"),
            "persons": {**strings, "description": "the person and every one merged into it"},
            "customers": strings,
            "truncated": {"type": "boolean"},
            "identifiers": {
                "type": "array",
                "items": obj(
                    {
                        "identifier": text,
                        "kind": text,
                        "person_id": text,
                        "linked_at": when,
                        "event_id": when,
                        "blocked": {"type": "boolean"},
                    }
                ),
            },
            "merges": {
                "type": "array",
                "items": obj(
                    {
                        "at": when,
                        "from_person": text,
                        "into_person": text,
                        "event_id": when,
                        "identifiers": {**strings, "description": "the identifiers that linked"},
                    }
                ),
            },
            "touchpoints": {
                "type": "array",
                "description": "every touchpoint of the person, in time order",
                "items": {
                    "type": "object",
                    "properties": {
                        "event_id": text,
                        "at": text,
                        "channel": text,
                        "touchpoint": text,
                        "action": text,
                        "outcome": text,
                        "outcome_reason": when,
                        "session_hint": when,
                        "identifiers": strings,
                        "csat": _nullable("integer"),
                        "nps": _nullable("integer"),
                        "revenue": number,
                        "currency": when,
                        "journeys": strings,
                        "negative_moments": strings,
                        "moments_of_truth": strings,
                    },
                    "required": ["event_id", "at", "channel", "touchpoint", "outcome"],
                },
            },
            "journeys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "journey_id": text,
                        "journey": text,
                        "started_at": when,
                        "last_at": when,
                        "stages": {"type": "array", "items": {"type": "object"}},
                        "stage": when,
                        "outcome": {
                            "enum": [
                                "active",
                                "converted",
                                "dropped_off",
                                "merged",
                                "retired",
                            ]
                        },
                        "outcome_at": when,
                        "score": {**number, "description": "peak-end experience score"},
                        "channels": strings,
                    },
                    "required": ["journey_id", "journey", "outcome", "stages"],
                },
            },
            "negative_moments": {"type": "array", "items": {"type": "object"}},
            "moments_of_truth": {"type": "array", "items": {"type": "object"}},
            "kpis": {
                "type": "object",
                "description": "csat, nps, first_contact_resolution, complaint_response, value, "
                "conversions, churn_risk and the answers themselves",
            },
        }
    )


def sink_openapi_document() -> dict[str, Any]:
    """The sink's JSON API for one customer (served at /api/v1/openapi.json on the sink)."""
    error = {
        "description": "",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            }
        },
    }

    def answer(description: str) -> dict[str, Any]:
        return {**error, "description": description}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "journeywatch sink API: customers",
            "version": "1",
            "description": "Behind the sink's sign-in (a bearer token or a session): "
            "docs/operations/security.md. The rest of the sink's API: docs/architecture.md.",
        },
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {"CustomerTimeline": customer_timeline_schema()},
        },
        "security": [{"token": []}],
        "paths": {
            "/api/v1/customers/{identifier}": {
                "get": {
                    "summary": "One customer's timeline (docs/customer-timeline.md)",
                    "description": "Every touchpoint of the stitched person across channels in "
                    "time order, its journeys (stages, outcome, peak-end score), negative "
                    "moments, moments of truth, KPIs, and the identity links and merges that "
                    "made it one person. The identifier is `kind:value` (customer_id, "
                    "loyalty_id, email_hash, phone_hash, device_id, anonymous_id), a person id "
                    "(`c:...`, `a:...`), `email:` or `phone:` with the raw address or number "
                    "(or a bare address, or a number starting with +), hashed with the "
                    "product's PII key as the collector hashes it and never stored or "
                    "logged, or else a bare customer id.",
                    "parameters": [
                        {
                            "name": "identifier",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "example": "customer_id:C-1042",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The timeline",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/CustomerTimeline"}
                                }
                            },
                        },
                        "400": answer("The identifier names nobody (empty)"),
                        "401": answer("Not signed in"),
                        "404": answer(
                            "Nobody is known by this identifier, or it is shared by several "
                            "customers (blocked from stitching)"
                        ),
                        "503": answer("A raw e-mail or phone, and no PII key to hash it"),
                    },
                }
            }
        },
    }
