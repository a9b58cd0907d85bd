//! The OpenAPI 3.0 description served at `GET /api/v1/openapi.json`.

use serde_json::{json, Value};

fn err() -> Value {
    json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(schema: &str) -> Value {
    json!({"description": "ok", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

pub fn document() -> Value {
    let id_param =
        json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]);
    let auth = json!([{"bearer": []}]);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "faceall serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Register faces and retrieve the closest registered faces. Distances are Euclidean between L2-normalised FaceNet embeddings (0 to 2). Every error is JSON {\"error\": ...}; 503 (with Retry-After) when the database is unavailable, 507 when the server's disk is full (nothing stored)."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4, "description": "x1, y1, x2, y2 in pixels"},
                "Landmarks": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}, "minItems": 5, "maxItems": 5, "description": "left eye, right eye, nose, mouth left, mouth right"},
                "Face": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "label": {"type": "string"},
                    "box": {"$ref": "#/components/schemas/Box"}, "landmarks": {"$ref": "#/components/schemas/Landmarks"},
                    "score": {"type": "number"}, "image_id": {"type": "integer"}, "image_url": {"type": "string"},
                    "created": {"type": "integer", "description": "seconds since the Unix epoch"}}},
                "Registered": {"type": "object", "properties": {
                    "registered": {"type": "integer"},
                    "images": {"type": "array", "items": {"type": "object", "properties": {
                        "image": {"type": "string"}, "image_id": {"type": "integer"},
                        "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Face"}},
                        "message": {"type": "string"}, "url": {"type": "string"}, "error": {"type": "string"}}}}}},
                "SearchResult": {"type": "object", "properties": {
                    "threshold": {"type": "number"},
                    "results": {"type": "array", "items": {"type": "object", "properties": {
                        "box": {"$ref": "#/components/schemas/Box"}, "landmarks": {"$ref": "#/components/schemas/Landmarks"},
                        "score": {"type": "number"},
                        "matches": {"type": "array", "items": {"type": "object", "properties": {
                            "id": {"type": "integer"}, "label": {"type": "string"}, "distance": {"type": "number"},
                            "box": {"$ref": "#/components/schemas/Box"}, "image_url": {"type": "string"}}}}}}}}},
                "Embedding": {"type": "array", "items": {"type": "number"}, "minItems": 512, "maxItems": 512,
                    "description": "the model's embedding size (512 for FaceNet); finite numbers, not all zero. The server L2-normalises every embedding it is given before storing or searching it, so any positive multiple of a vector is the same vector."},
                "EmbeddingMatches": {"type": "object", "properties": {
                    "threshold": {"type": "number"},
                    "results": {"type": "array", "description": "one per query, in query order", "items": {"type": "object", "properties": {
                        "matches": {"type": "array", "items": {"type": "object", "properties": {
                            "id": {"type": "integer"}, "label": {"type": "string"}, "distance": {"type": "number"},
                            "box": {"$ref": "#/components/schemas/Box", "nullable": true}, "image_url": {"type": "string", "nullable": true}}}}}}}}},
                "FaceList": {"type": "object", "properties": {
                    "total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"},
                    "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Face"}}}}
            }
        },
        "paths": {
            "/api/v1/faces": {
                "get": {"summary": "List registered faces", "parameters": [
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 50, "maximum": 1000}}],
                    "responses": {"200": ok("FaceList")}},
                "post": {"summary": "Register every face in one or more photos under a label", "security": auth,
                    "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["image", "label"], "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": 100},
                        "label": {"type": "string", "maxLength": 100}}}}}},
                    "responses": {"200": ok("Registered"), "400": err(), "401": err(), "403": err(), "413": err(), "422": err()}}
            },
            "/api/v1/faces/urls": {
                "post": {"summary": "Register photos fetched from http or https URLs on the server's allow-list (up to 3 redirects, each to an allowed host; one deadline and one 20 MB budget for all URLs)", "security": auth,
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["urls", "label"], "properties": {
                        "urls": {"type": "array", "items": {"type": "string"}, "maxItems": 100}, "label": {"type": "string"}}}}}},
                    "responses": {"200": ok("Registered"), "400": err(), "401": err(), "403": err(), "422": err()}}
            },
            "/api/v1/faces/embeddings": {
                "post": {"summary": "Register faces by their embeddings (migrations from other systems); each is durable when the response arrives", "security": auth,
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["faces"], "properties": {
                        "faces": {"type": "array", "minItems": 1, "maxItems": super::storage::MAX_EMBEDDINGS_PER_CALL, "items": {"type": "object", "required": ["label", "embedding"], "properties": {
                            "label": {"type": "string", "maxLength": 100}, "embedding": {"$ref": "#/components/schemas/Embedding"}}}}}}}}},
                    "responses": {"200": {"description": "the new faces' ids, in request order", "content": {"application/json": {"schema": {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "integer"}}}}}}},
                        "400": err(), "401": err(), "403": err(), "413": err(), "503": err(), "507": err()}}
            },
            "/api/v1/search/embeddings": {
                "post": {"summary": "The closest registered faces of each given embedding, within the threshold, best first",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["embeddings"], "properties": {
                        "embeddings": {"type": "array", "minItems": 1, "maxItems": super::storage::MAX_QUERIES_PER_CALL, "items": {"$ref": "#/components/schemas/Embedding"}},
                        "k": {"type": "integer", "default": 5, "minimum": 1, "maximum": 100},
                        "threshold": {"type": "number", "default": super::DEFAULT_THRESHOLD}}}}}},
                    "responses": {"200": ok("EmbeddingMatches"), "400": err(), "413": err(), "503": err()}}
            },
            "/api/v1/faces/{id}": {
                "get": {"summary": "One face, with its embedding", "parameters": id_param, "responses": {"200": ok("Face"), "404": err()}},
                "delete": {"summary": "Delete a face", "security": auth, "parameters": id_param, "responses": {"200": {"description": "deleted"}, "404": err(), "401": err(), "403": err()}}
            },
            "/api/v1/images/{id}": {
                "get": {"summary": "A stored photo", "parameters": id_param, "responses": {"200": {"description": "the photo", "content": {"image/jpeg": {}, "image/png": {}}}, "404": err()}}
            },
            "/api/v1/search": {
                "post": {"summary": "For every face in a photo, the closest registered faces within the threshold, best first",
                    "parameters": [
                        {"name": "k", "in": "query", "schema": {"type": "integer", "default": 5, "maximum": 100}},
                        {"name": "threshold", "in": "query", "schema": {"type": "number", "default": super::DEFAULT_THRESHOLD}}],
                    "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "format": "binary"}}}}}},
                    "responses": {"200": ok("SearchResult"), "400": err(), "413": err(), "422": err()}}
            },
            "/api/v1/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/api/v1/stats": {"get": {"summary": "Counts (faces, labels, images, indexed, index_waiting: faces searched exactly beside the graph until the background inserts them), threshold, model, uptime", "responses": {"200": {"description": "ok"}}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "ok"}}}}
        }
    })
}
