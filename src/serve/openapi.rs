//! The OpenAPI 3.0 description served at `GET /api/v1/openapi.json`.

use serde_json::{json, Value};

fn err() -> Value {
    json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(schema: &str) -> Value {
    json!({"description": "ok", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// A photo route's body: a multipart form, or the same fields as JSON
/// with each photo field `F` sent as `F_base64`.
fn photo_body(photos: &[(&str, bool)], texts: &[(&str, Value)], required: &[&str]) -> Value {
    let mut form = serde_json::Map::new();
    let mut js = serde_json::Map::new();
    for (f, many) in photos {
        let file = json!({"type": "string", "format": "binary"});
        let b64 = json!({"type": "string", "format": "byte", "description": "standard base64 (padding optional, whitespace ignored, a data: URL accepted)"});
        if *many {
            form.insert(
                f.to_string(),
                json!({"type": "array", "items": file, "maxItems": super::MAX_IMAGES}),
            );
            js.insert(format!("{f}_base64"), json!({"oneOf": [b64, {"type": "array", "items": b64, "maxItems": super::MAX_IMAGES}]}));
        } else {
            form.insert(f.to_string(), file);
            js.insert(format!("{f}_base64"), b64);
        }
    }
    for (f, schema) in texts {
        form.insert(f.to_string(), schema.clone());
        js.insert(f.to_string(), schema.clone());
    }
    let js_required: Vec<String> = required
        .iter()
        .map(|r| {
            if photos.iter().any(|(p, _)| p == r) {
                format!("{r}_base64")
            } else {
                r.to_string()
            }
        })
        .collect();
    json!({"required": true, "description": "photos (JPEG or PNG) of at most 20 MB together, however sent", "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": required, "properties": form}},
        "application/json": {"schema": {"type": "object", "required": js_required, "properties": js}}}})
}

pub fn document() -> Value {
    let id_param =
        json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]);
    let auth = json!([{"bearer": []}]);
    let label = json!({"type": "string", "maxLength": super::MAX_LABEL_CHARS});
    let label_param =
        json!([{"name": "label", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "faceall serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Register faces and retrieve the closest registered faces. Distances are Euclidean between L2-normalised FaceNet embeddings (0 to 2). Faces live in collections (`?collection=`, default `default`), each a gallery of its own with its own key. Every response carries X-Request-Id (the client's, if it sent a plain one), also in the server's log. Every error is JSON {\"error\": ...}; 503 (with Retry-After) when the database is unavailable, 507 when the server's disk is full (nothing stored)."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Detection": {"type": "object", "properties": {
                    "box": {"$ref": "#/components/schemas/Box"}, "landmarks": {"$ref": "#/components/schemas/Landmarks"}, "score": {"type": "number"}}},
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
                    "requestBody": photo_body(&[("image", true)], &[("label", label.clone())], &["image", "label"]),
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
                    "requestBody": photo_body(&[("image", false)], &[], &["image"]),
                    "responses": {"200": ok("SearchResult"), "400": err(), "413": err(), "422": err()}}
            },
            "/api/v1/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/api/v1/stats": {"get": {"summary": "Counts (faces, labels, images, indexed, index_waiting: faces searched exactly beside the graph until the background inserts them), threshold, model, uptime", "responses": {"200": {"description": "ok"}}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (OpenMetrics text): faceall_http_requests_total and faceall_http_request_duration_seconds by method, route template and status; faceall_photo_detect_embed_seconds; faceall_gallery_faces, _labels, _images", "responses": {"200": {"description": "metrics", "content": {"application/openmetrics-text": {}}}, "401": err()}}}
        }
    });
    for (path, item) in analysis_paths(&auth, &label, &label_param) {
        doc["paths"][path] = item;
    }
    for (path, item) in collection_paths(&auth) {
        doc["paths"][path] = item;
    }
    // Every route on a gallery takes ?collection=.
    let collection = json!({"name": "collection", "in": "query",
        "description": "the collection (default `default`); a collection's key works in its own only (403 elsewhere), the admin token in all; 404 for one that does not exist",
        "schema": {"type": "string", "default": "default", "pattern": "^[a-z0-9][a-z0-9_-]{0,47}$"}});
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let on_gallery = [
                "/api/v1/faces",
                "/api/v1/images",
                "/api/v1/search",
                "/api/v1/subjects",
                "/api/v1/stats",
                "/api/v1/verify",
            ]
            .iter()
            .any(|p| path.starts_with(p));
            let Some(ops) = item.as_object_mut().filter(|_| on_gallery) else {
                continue;
            };
            for op in ops.values_mut() {
                match op["parameters"].as_array_mut() {
                    Some(ps) => ps.push(collection.clone()),
                    None => op["parameters"] = json!([collection.clone()]),
                }
            }
        }
    }
    doc
}

/// The collections routes (admin token).
fn collection_paths(auth: &Value) -> Vec<(&'static str, Value)> {
    let name = json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,47}$"});
    vec![
        (
            "/api/v1/collections",
            json!({
                "post": {"summary": "Create a collection: a gallery of its own with its own API key (shown only in this answer; the server keeps its SHA-256)", "security": auth,
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["name"], "properties": {"name": name}}}}},
                    "responses": {"201": {"description": "created", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "name": {"type": "string"}, "api_key": {"type": "string"}, "created": {"type": "integer"}}}}}},
                        "400": err(), "401": err(), "403": err(), "409": err()}},
                "get": {"summary": "Every collection with its counts (never its key)", "security": auth,
                    "responses": {"200": {"description": "collections", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "collections": {"type": "array", "items": {"type": "object", "properties": {
                            "name": {"type": "string"}, "faces": {"type": "integer"}, "labels": {"type": "integer"}, "images": {"type": "integer"}, "created": {"type": "integer"}}}}}}}}},
                        "401": err(), "403": err()}}
            }),
        ),
        (
            "/api/v1/collections/{name}",
            json!({
                "delete": {"summary": "Delete a collection with its faces, photos and key (`default` cannot be deleted)", "security": auth,
                    "parameters": [{"name": "name", "in": "path", "required": true, "schema": name}],
                    "responses": {"200": {"description": "deleted, faces"}, "400": err(), "401": err(), "403": err(), "404": err()}}
            }),
        ),
    ]
}

/// The paths of verify, detect, embed and subjects (apart from the rest:
/// one `json!` of everything passes the macro's recursion limit).
fn analysis_paths(auth: &Value, label: &Value, label_param: &Value) -> Vec<(&'static str, Value)> {
    vec![
        (
            "/api/v1/verify",
            json!({
                "post": {"summary": "1:1 verification: are the largest faces of image1 and image2 (or image1 and the closest face registered under label) the same person",
                    "parameters": [{"name": "threshold", "in": "query", "schema": {"type": "number", "default": super::DEFAULT_THRESHOLD}}],
                    "requestBody": photo_body(&[("image1", false), ("image2", false)], &[("label", label.clone())], &["image1"]),
                    "responses": {"200": {"description": "same_person is distance <= threshold", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "same_person": {"type": "boolean"}, "distance": {"type": "number"}, "threshold": {"type": "number"},
                        "image1": {"$ref": "#/components/schemas/Detection"}, "image2": {"$ref": "#/components/schemas/Detection"},
                        "label": {"type": "string"}, "registered_faces": {"type": "integer"},
                        "nearest": {"type": "object", "properties": {"id": {"type": "integer"}, "box": {"$ref": "#/components/schemas/Box"}, "image_url": {"type": "string"}}}}}}}},
                        "400": err(), "404": err(), "413": err(), "422": {"description": "no face in one of the photos (the error names which)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
            }),
        ),
        (
            "/api/v1/detect",
            json!({
                "post": {"summary": "Every face of a photo (box, five landmarks, score), best-scored first; nothing is stored",
                    "requestBody": photo_body(&[("image", false)], &[], &["image"]),
                    "responses": {"200": {"description": "faces", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"}}}}}}}, "400": err(), "413": err()}}
            }),
        ),
        (
            "/api/v1/embed",
            json!({
                "post": {"summary": "The faces of a photo with their L2-normalised embeddings (the vectors search compares); nothing is stored",
                    "requestBody": photo_body(&[("image", false)], &[], &["image"]),
                    "responses": {"200": {"description": "faces", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "faces": {"type": "array", "items": {"allOf": [{"$ref": "#/components/schemas/Detection"}, {"type": "object", "properties": {"embedding": {"$ref": "#/components/schemas/Embedding"}}}]}},
                        "faces_not_embedded": {"type": "integer", "description": "faces beyond the server's --max-faces"}}}}}}, "400": err(), "413": err()}}
            }),
        ),
        (
            "/api/v1/subjects",
            json!({
                "get": {"summary": "Registered labels in order, each with its number of faces", "parameters": [
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 50, "maximum": 1000}}],
                    "responses": {"200": {"description": "one page", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"},
                        "subjects": {"type": "array", "items": {"type": "object", "properties": {"label": {"type": "string"}, "faces": {"type": "integer"}}}}}}}}}}}
            }),
        ),
        (
            "/api/v1/subjects/{label}",
            json!({
                "get": {"summary": "A label's faces in id order, paged (more: a next page has faces)", "parameters": [
                    label_param[0].clone(),
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 50, "maximum": 1000}}],
                    "responses": {"200": {"description": "one page", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "label": {"type": "string"}, "offset": {"type": "integer"}, "limit": {"type": "integer"}, "more": {"type": "boolean"},
                        "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Face"}}}}}}}, "404": err()}},
                "patch": {"summary": "Rename a label (its faces join the new label if it exists)", "security": auth, "parameters": label_param,
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["label"], "properties": {"label": label.clone()}}}}},
                    "responses": {"200": {"description": "label, renamed_from, faces (how many moved)"}, "400": err(), "401": err(), "403": err(), "404": err()}},
                "delete": {"summary": "Delete a label's faces (and the photos no other face refers to)", "security": auth, "parameters": label_param,
                    "responses": {"200": {"description": "label, deleted_faces"}, "400": err(), "401": err(), "403": err(), "404": err()}}
            }),
        ),
    ]
}
