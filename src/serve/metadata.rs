//! Location and camera metadata removed from stored photos (unless
//! `--keep-exif`): EXIF and XMP can carry GPS positions, device serials
//! and times, which a face gallery has no use for. The image data itself is
//! copied byte for byte; only whole metadata segments (JPEG) or chunks
//! (PNG) are dropped, so nothing is re-encoded.

/// The photo without EXIF/XMP; the bytes unchanged when they do not parse
/// as the container they claim to be (the decoder has accepted them, so
/// this is only a safety net).
pub fn strip(bytes: Vec<u8>) -> Vec<u8> {
    let out = if bytes.starts_with(&[0xFF, 0xD8]) {
        strip_jpeg(&bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        strip_png(&bytes)
    } else {
        None
    };
    out.unwrap_or(bytes)
}

const XMP: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

fn strip_jpeg(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..2]);
    let mut i = 2;
    loop {
        // Fill bytes (FF FF ...) may precede a marker.
        while b.get(i) == Some(&0xFF) && b.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        if *b.get(i)? != 0xFF {
            return None;
        }
        let marker = *b.get(i + 1)?;
        if marker == 0xDA || marker == 0xD9 {
            // Start of scan (or an image without one): the rest is data.
            out.extend_from_slice(b.get(i..)?);
            return Some(out);
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            out.extend_from_slice(b.get(i..i + 2)?);
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([*b.get(i + 2)?, *b.get(i + 3)?]) as usize;
        if len < 2 {
            return None;
        }
        let seg = b.get(i..i + 2 + len)?;
        let payload = &seg[4..];
        let drop = marker == 0xE1 && (payload.starts_with(b"Exif\0") || payload.starts_with(XMP));
        if !drop {
            out.extend_from_slice(seg);
        }
        i += 2 + len;
    }
}

fn strip_png(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..8]);
    let mut i = 8;
    while i < b.len() {
        let len = u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize;
        let end = i.checked_add(12)?.checked_add(len)?;
        let chunk = b.get(i..end)?;
        let kind = &chunk[4..8];
        let data = &chunk[8..8 + len];
        let text_key = |d: &[u8]| d.split(|c| *c == 0).next().unwrap_or(&[]).to_vec();
        let drop = kind == b"eXIf"
            || (matches!(kind, b"iTXt" | b"tEXt" | b"zTXt")
                && matches!(
                    text_key(data).as_slice(),
                    b"XML:com.adobe.xmp" | b"Raw profile type exif" | b"Raw profile type APP1"
                ));
        if !drop {
            out.extend_from_slice(chunk);
        }
        i = end;
        if kind == b"IEND" {
            out.extend_from_slice(b.get(i..)?);
            break;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_and_xmp_go_the_image_stays() {
        // SOI, APP0 (JFIF), APP1 (Exif), APP1 (XMP), DQT, SOS + data, EOI.
        let mut j = vec![0xFF, 0xD8];
        j.extend([0xFF, 0xE0, 0x00, 0x07]);
        j.extend(b"JFIF\0");
        j.extend([0xFF, 0xE1, 0x00, 0x0C]);
        j.extend(b"Exif\0\0GPS!");
        let mut xmp = XMP.to_vec();
        xmp.extend(b"<x/>");
        j.extend([0xFF, 0xE1, 0x00, (xmp.len() + 2) as u8]);
        j.extend(&xmp);
        j.extend([0xFF, 0xDB, 0x00, 0x03, 0x42]);
        j.extend([0xFF, 0xDA, 0x00, 0x02, 0x11, 0x22, 0xFF, 0xD9, b'x']);
        let s = strip(j.clone());
        assert!(!s.windows(4).any(|w| w == b"Exif"));
        assert!(!s.windows(4).any(|w| w == b"adob"));
        assert!(s.windows(4).any(|w| w == b"JFIF"));
        assert!(s.ends_with(&[0xFF, 0xDA, 0x00, 0x02, 0x11, 0x22, 0xFF, 0xD9, b'x']));
        // A PNG's eXIf chunk goes, its image chunks stay.
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut c = (data.len() as u32).to_be_bytes().to_vec();
            c.extend(kind);
            c.extend(data);
            c.extend([0, 0, 0, 0]);
            c
        };
        let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
        p.extend(chunk(b"IHDR", &[0; 13]));
        p.extend(chunk(b"eXIf", b"MM\0*GPS"));
        p.extend(chunk(b"IDAT", b"pixels"));
        p.extend(chunk(b"IEND", b""));
        let s = strip(p);
        assert!(!s.windows(4).any(|w| w == b"eXIf"));
        assert!(s.windows(6).any(|w| w == b"pixels"));
        // Garbage is left as it is.
        assert_eq!(strip(vec![0xFF, 0xD8, 1, 2]), vec![0xFF, 0xD8, 1, 2]);
    }
}
