//! The photos and text fields of a request, from either a multipart form
//! (`image=@a.jpg`) or a JSON body (`{"image_base64": "..."}`), with the
//! same limits either way: a route names the fields it takes, and anything
//! else is refused by name.
//!
//! JSON: a photo field `F` is sent as `F_base64`, a string of standard
//! base64 (padding optional, line breaks and spaces ignored, a leading
//! `data:image/...;base64,` accepted) or an array of such strings where the
//! route takes several photos; a text field is a JSON string.

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};
use base64::Engine as _;
use serde_json::Value;

use super::error::{bad, ApiError};
use super::{MAX_BODY_BYTES, MAX_IMAGES};

/// Request bodies of the photo routes: MAX_BODY_BYTES of photos as base64
/// (4/3 larger) plus room for the JSON around them. The photos themselves
/// are held to MAX_BODY_BYTES together, however they were sent.
pub const MAX_PHOTO_BODY_BYTES: usize = MAX_BODY_BYTES / 3 * 4 + 64 * 1024;

/// One photo of a request.
pub(crate) struct FormPhoto {
    /// The form field it came in (`image`, `image1`...).
    pub field: &'static str,
    /// The uploaded file's name, or the JSON key it came in.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What a route takes: photo fields and text fields.
pub(crate) struct Fields {
    pub photos: &'static [&'static str],
    pub texts: &'static [&'static str],
}

pub(crate) struct PhotoForm {
    /// In the order they were sent.
    pub photos: Vec<FormPhoto>,
    texts: Vec<(&'static str, String)>,
}

impl PhotoForm {
    /// Read a multipart or JSON body (by its Content-Type) with `fields`.
    pub async fn read(req: Request, fields: &Fields) -> Result<Self, ApiError> {
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let form = if ctype.starts_with("application/json") {
            let body = axum::body::Bytes::from_request(req, &())
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
            Self::from_json(&body, fields)?
        } else {
            let mp = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
            Self::from_multipart(mp, fields).await?
        };
        let total: usize = form.photos.iter().map(|p| p.bytes.len()).sum();
        if total > MAX_BODY_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the photos of one request may have {} MB together",
                    MAX_BODY_BYTES >> 20
                ),
            ));
        }
        Ok(form)
    }

    async fn from_multipart(mut mp: Multipart, fields: &Fields) -> Result<Self, ApiError> {
        let mut form = PhotoForm {
            photos: vec![],
            texts: vec![],
        };
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(ApiError::new(e.status(), e.body_text())),
            };
            let name = field.name().unwrap_or("").to_string();
            let file = field.file_name().unwrap_or("upload").to_string();
            let data = field
                .bytes()
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
            if let Some(f) = fields.photos.iter().find(|f| **f == name) {
                form.push_photo(f, file, data.to_vec())?;
            } else if let Some(f) = fields.texts.iter().find(|f| **f == name) {
                form.texts
                    .push((f, String::from_utf8_lossy(&data).into_owned()));
            } else {
                return Err(bad(format!("unexpected form field '{name}'")));
            }
        }
        Ok(form)
    }

    fn from_json(body: &[u8], fields: &Fields) -> Result<Self, ApiError> {
        let v: serde_json::Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| bad(format!("the JSON body is not an object of fields: {e}")))?;
        let mut form = PhotoForm {
            photos: vec![],
            texts: vec![],
        };
        for (key, value) in v {
            let photo = key
                .strip_suffix("_base64")
                .and_then(|stem| fields.photos.iter().find(|f| **f == stem));
            if let Some(f) = photo {
                match value {
                    Value::String(s) => {
                        let bytes = decode_base64(&key, &s)?;
                        form.push_photo(f, key.clone(), bytes)?;
                    }
                    Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let name = format!("{key}[{i}]");
                            let Value::String(s) = item else {
                                return Err(bad(format!("{name}: not a base64 string")));
                            };
                            let bytes = decode_base64(&name, &s)?;
                            form.push_photo(f, name, bytes)?;
                        }
                    }
                    _ => return Err(bad(format!("{key}: not a base64 string"))),
                }
            } else if let Some(f) = fields.texts.iter().find(|f| **f == key) {
                let Value::String(s) = value else {
                    return Err(bad(format!("{key}: not a string")));
                };
                form.texts.push((f, s));
            } else {
                let takes: Vec<String> = fields
                    .photos
                    .iter()
                    .map(|f| format!("{f}_base64"))
                    .chain(fields.texts.iter().map(|f| f.to_string()))
                    .collect();
                return Err(bad(format!(
                    "unexpected field '{key}' (this route takes {})",
                    takes.join(", ")
                )));
            }
        }
        Ok(form)
    }

    fn push_photo(
        &mut self,
        field: &'static str,
        name: String,
        bytes: Vec<u8>,
    ) -> Result<(), ApiError> {
        if self.photos.len() == MAX_IMAGES {
            return Err(bad(format!("at most {MAX_IMAGES} images per request")));
        }
        self.photos.push(FormPhoto { field, name, bytes });
        Ok(())
    }

    /// The photos of one field, as (name, bytes).
    pub fn take_photos(&mut self, field: &str) -> Vec<(String, Vec<u8>)> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.photos)
            .into_iter()
            .partition(|p| p.field == field);
        self.photos = rest;
        mine.into_iter().map(|p| (p.name, p.bytes)).collect()
    }

    /// Exactly one photo of `field`, or a 400 saying so.
    pub fn one_photo(&mut self, field: &str) -> Result<(String, Vec<u8>), ApiError> {
        let mut p = self.take_photos(field);
        if p.len() != 1 {
            return Err(bad(format!(
                "send exactly one '{field}' (a form file, or {field}_base64 in JSON); got {}",
                p.len()
            )));
        }
        Ok(p.remove(0))
    }

    /// The last value of a text field.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.texts
            .iter()
            .rev()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v.as_str())
    }
}

/// Standard base64 (padding optional), ignoring ASCII whitespace and a
/// leading data-URL header.
fn decode_base64(what: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    let s = match s.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, data)) => data,
            None => return Err(bad(format!("{what}: a data URL must be ';base64,'"))),
        },
        None => s,
    };
    let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(&clean)
        .map_err(|e| bad(format!("{what}: not valid base64 ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Fields = Fields {
        photos: &["image1", "image2"],
        texts: &["label"],
    };

    #[test]
    fn json_fields_map_to_form_fields() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"\xff\xd8abc");
        let body = serde_json::json!({
            "image1_base64": b64,
            "image2_base64": format!("data:image/jpeg;base64,{}", &b64[..4]) + "\n" + &b64[4..],
            "label": "x",
        });
        let mut f = PhotoForm::from_json(body.to_string().as_bytes(), &F).unwrap();
        assert_eq!(f.text("label"), Some("x"));
        assert_eq!(f.one_photo("image1").unwrap().1, b"\xff\xd8abc");
        assert_eq!(f.one_photo("image2").unwrap().1, b"\xff\xd8abc");
        assert!(f.one_photo("image2").is_err(), "taken already");
    }

    #[test]
    fn bad_json_is_refused_by_name() {
        for (body, want) in [
            (
                r#"{"image1_base64": "@@@"}"#,
                "image1_base64: not valid base64",
            ),
            (r#"{"image1_base64": 5}"#, "not a base64 string"),
            (r#"{"image1_base64": ["QUJD", 5]}"#, "image1_base64[1]"),
            (
                r#"{"image3_base64": "QUJD"}"#,
                "unexpected field 'image3_base64'",
            ),
            (r#"{"label": ["a"]}"#, "label: not a string"),
            (r#"["image1_base64"]"#, "not an object"),
            (r#"{"image1_base64": "data:image/png,QUJD"}"#, "data URL"),
        ] {
            let e = PhotoForm::from_json(body.as_bytes(), &F).err().unwrap();
            assert!(e.message.contains(want), "{body}: {}", e.message);
        }
    }
}
