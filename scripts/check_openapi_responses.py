#!/usr/bin/env python3
"""Check real responses of `faceall serve` against its OpenAPI document.

    check_openapi_responses.py DOC.json SAMPLES.json

SAMPLES is a JSON list of {"method", "path" (the route template), "status",
"body"}. Each body must match the schema the document gives for that
operation and status, with every object closed (`unevaluatedProperties:
false`), so a field the server sends but the document does not describe
fails, as does a missing required field, a wrong type, or a status the
operation does not document. Prints one line per failure; exit 1 if any.
"""
import copy
import json
import sys

import jsonschema
import referencing
from referencing.jsonschema import DRAFT202012


PREFIX = "#/components/schemas/"


def close(node):
    """Close an object schema: it refuses properties it does not name.
    unevaluatedProperties sees through allOf (how a flattened struct is
    described), so an allOf is closed as a whole and its parts, which
    cannot see each other's properties, are left open."""
    if isinstance(node, dict):
        if "allOf" in node:
            node.setdefault("unevaluatedProperties", False)
            for part in node["allOf"]:
                ref = part.get("$ref", "") if isinstance(part, dict) else ""
                if ref.startswith(PREFIX):
                    part["$ref"] = ref + "__open"
                else:
                    close_children(part)
        elif "properties" in node:
            node.setdefault("unevaluatedProperties", False)
        close_children(node)
    elif isinstance(node, list):
        for v in node:
            close(v)


def close_children(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "allOf":
                close(v)


def closed(doc):
    doc = copy.deepcopy(doc)
    schemas = doc.get("components", {}).get("schemas", {})
    for name, schema in list(schemas.items()):
        part = copy.deepcopy(schema)
        close_children(part)
        schemas[name + "__open"] = part
    for name in [n for n in schemas if not n.endswith("__open")]:
        close(schemas[name])
    close(doc.get("paths", {}))
    return doc


def pointer(*parts):
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def main():
    doc = json.load(open(sys.argv[1]))
    samples = json.load(open(sys.argv[2]))
    strict = closed(doc)
    res = referencing.Resource.from_contents(strict, default_specification=DRAFT202012)
    registry = referencing.Registry().with_resource("urn:faceall", res)
    bad = 0
    for s in samples:
        m, p, st = s["method"].lower(), s["path"], str(s["status"])
        op = doc.get("paths", {}).get(p, {}).get(m)
        if op is None:
            print(f"{m.upper()} {p}: not in the document")
            bad += 1
            continue
        resp = op.get("responses", {}).get(st)
        if resp is None:
            print(f"{m.upper()} {p}: status {st} is not documented ({sorted(op.get('responses', {}))})")
            bad += 1
            continue
        content = resp.get("content", {}).get("application/json")
        if content is None:
            print(f"{m.upper()} {p} {st}: no application/json body documented")
            bad += 1
            continue
        ref = {"$ref": "urn:faceall" + pointer("paths", p, m, "responses", st, "content", "application/json", "schema")}
        v = jsonschema.Draft202012Validator(ref, registry=registry)
        for e in v.iter_errors(s["body"]):
            print(f"{m.upper()} {p} {st}: {e.json_path}: {e.message[:300]}")
            bad += 1
    print(f"{len(samples)} responses checked, {bad} failures")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
