//! FaceNet's input preprocessing: a face crop resized to the model's input
//! size, then "prewhitened": (x - mean) / max(std, 1/sqrt(n)) over all
//! pixels and channels of the crop.

use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::Tensor;

/// Largest image accepted (pixels), against decompression bombs.
pub const MAX_PIXELS: u64 = 40_000_000;

/// Prewhiten in place, as FaceNet's `facenet.prewhiten`.
pub fn prewhiten(x: &mut [f32]) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let adj = var.sqrt().max(1.0 / n.sqrt());
    x.iter_mut()
        .for_each(|v| *v = ((*v as f64 - mean) / adj) as f32);
}

/// Decode an image file with limits on its size.
pub fn decode(path: &Path) -> Result<image::RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::from(e).in_file(path))?;
    decode_bytes(&bytes).map_err(|e| e.in_file(path))
}

/// Memory the header of an image may take to read: its ancillary blocks
/// (EXIF, XMP, colour profiles) are bounded by this.
pub const MAX_HEADER_BYTES: u64 = 8 << 20;

/// A PNG decoder that skips the colour profile (iCCP) and text chunks:
/// both are deflate-compressed, a 1 MB file can hold a profile that
/// inflates to hundreds of MB, and nothing here uses them (pixels are
/// taken as sRGB, as the detector was trained). Output: 8 bits per
/// sample, palettes expanded.
fn png_decoder(bytes: &[u8], limit: u64) -> png::Decoder<std::io::Cursor<&[u8]>> {
    let mut d = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits {
            bytes: usize::try_from(limit).unwrap_or(usize::MAX),
        },
    );
    d.set_ignore_iccp_chunk(true);
    d.set_ignore_text_chunk(true);
    d.set_transformations(png::Transformations::normalize_to_color8());
    d
}

fn png_error(e: png::DecodingError) -> Error {
    match e {
        png::DecodingError::LimitsExceeded => {
            Error::Format("unreadable image: the PNG needs more memory than its size allows".into())
        }
        e => Error::Format(format!("unreadable image: {e}")),
    }
}

/// Width, height and format from the header, without decoding the pixels;
/// over [`MAX_PIXELS`] is an error.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32, Option<image::ImageFormat>)> {
    let format = image::guess_format(bytes).ok();
    let (w, h) = if format == Some(image::ImageFormat::Png) {
        let r = png_decoder(bytes, MAX_HEADER_BYTES)
            .read_info()
            .map_err(png_error)?;
        (r.info().width, r.info().height)
    } else {
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::Format(format!("unreadable image: {e}")))?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(MAX_HEADER_BYTES);
        reader.limits(limits);
        reader
            .into_dimensions()
            .map_err(|e| Error::Format(format!("unreadable image: {e}")))?
    };
    if (w as u64) * (h as u64) > MAX_PIXELS {
        return Err(Error::Format(format!(
            "image of {w}x{h} pixels is over the limit of {MAX_PIXELS}"
        )));
    }
    Ok((w, h, format))
}

/// A PNG as RGB (alpha dropped, grey replicated), reading at most the
/// decoded pixels plus [`MAX_HEADER_BYTES`].
fn decode_png(bytes: &[u8], w: u32, h: u32) -> Result<image::RgbImage> {
    let limit = (w as u64) * (h as u64) * 8 + MAX_HEADER_BYTES;
    let mut r = png_decoder(bytes, limit).read_info().map_err(png_error)?;
    let size = r
        .output_buffer_size()
        .ok_or_else(|| Error::Format("unreadable image: PNG too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = r.next_frame(&mut buf).map_err(png_error)?;
    let (fw, fh) = (info.width, info.height);
    let px = (fw as usize) * (fh as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(Error::Format(
                "unreadable image: PNG palette not expanded".into(),
            ))
        }
    };
    let mut rgb = Vec::with_capacity(px * 3);
    for row in buf.chunks(info.line_size.max(1)).take(fh as usize) {
        for p in row.chunks_exact(channels).take(fw as usize) {
            match p {
                [g] | [g, _] => rgb.extend([*g, *g, *g]),
                [r, g, b] | [r, g, b, _] => rgb.extend([*r, *g, *b]),
                _ => {}
            }
        }
    }
    image::RgbImage::from_raw(fw, fh, rgb)
        .ok_or_else(|| Error::Format("unreadable image: PNG rows shorter than its width".into()))
}

/// Decode JPEG or PNG bytes with limits on their size. Whether a JPEG is
/// complete is the decoder's call (strict mode: a scan whose data runs out
/// is an error; image's default fills the missing rows with grey and
/// succeeds), so data after a complete image (phones' "motion photos") is
/// fine and a cut-off file is not, also when an end-of-image marker was
/// appended to the cut (see `decode_jpeg_strict`).
pub fn decode_bytes(bytes: &[u8]) -> Result<image::RgbImage> {
    let (w, h, format) = dimensions(bytes)?;
    match format {
        Some(image::ImageFormat::Jpeg) => return decode_jpeg_strict(bytes, w, h),
        Some(image::ImageFormat::Png) => return decode_png(bytes, w, h),
        _ => {}
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Format(format!("unreadable image: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 4);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| Error::Format(format!("unreadable image: {e}")))?;
    Ok(img.to_rgb8())
}

/// 1-bits placed where a truncated scan would look for more data.
const ONES_PAIRS: usize = 16;

/// Where the first image of a JPEG ends: the offset of the EOI marker that
/// follows its last scan, found by walking the segments (lengths) and the
/// entropy-coded data (up to the first marker that is not a restart or a
/// stuffed byte). None when the walk runs off the end (truncated).
fn jpeg_eoi(bytes: &[u8]) -> Option<usize> {
    if bytes.get(..2) != Some(&[0xFF, 0xD8][..]) {
        return None;
    }
    let mut i = 2;
    loop {
        if *bytes.get(i)? != 0xFF {
            return None;
        }
        // Fill bytes (FF FF ...) before a marker.
        while *bytes.get(i + 1)? == 0xFF {
            i += 1;
        }
        let m = *bytes.get(i + 1)?;
        match m {
            0xD9 => return Some(i),
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                let len = u16::from_be_bytes([*bytes.get(i + 2)?, *bytes.get(i + 3)?]) as usize;
                if len < 2 {
                    return None;
                }
                i += 2 + len;
                if m == 0xDA {
                    // Entropy-coded data up to the next real marker.
                    loop {
                        if *bytes.get(i)? == 0xFF {
                            match *bytes.get(i + 1)? {
                                0x00 | 0xD0..=0xD7 => i += 2,
                                0xFF => i += 1,
                                _ => break,
                            }
                        } else {
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

/// Decoded with zune-jpeg in strict mode, with the EOI that ends the first
/// image replaced by bytes the decoder cannot take as image data: the
/// decoder fills a scan that ends early at an EOI with zeros and calls it
/// complete, so half a JPEG with FF D9 appended would pass. After a
/// complete scan nothing more is read; a scan that ends early now meets
/// 1-bits (stuffed FF 00 pairs: no Huffman code is all ones) and then the
/// end of the data, and fails. What follows that EOI (a phone's "motion
/// photo", padding) is not the image and is ignored.
fn decode_jpeg_strict(bytes: &[u8], w: u32, h: u32) -> Result<image::RgbImage> {
    let padded;
    let bytes = match jpeg_eoi(bytes).and_then(|end| bytes.get(..end)) {
        Some(image) => {
            let mut b = Vec::with_capacity(image.len() + 2 * ONES_PAIRS + 2);
            b.extend_from_slice(image);
            for _ in 0..ONES_PAIRS {
                b.extend([0xFF, 0x00]);
            }
            b.extend([0xFF, 0xD9]);
            padded = b;
            &padded[..]
        }
        None => bytes,
    };
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let opts = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(w as usize)
        .set_max_height(h as usize);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    let px = d.decode().map_err(|e| {
        Error::Format(format!(
            "unreadable image: truncated or damaged JPEG ({e:?})"
        ))
    })?;
    let (dw, dh) = d
        .dimensions()
        .ok_or_else(|| Error::Format("unreadable image: JPEG without dimensions".into()))?;
    image::RgbImage::from_raw(dw as u32, dh as u32, px)
        .ok_or_else(|| Error::Format("unreadable image: JPEG of unexpected size".into()))
}

/// `img`, or the window (left, top, width, height) of it, resized to `w` x
/// `h`: exactly what `image`'s `resize` with `FilterType::Triangle` computes
/// (the same taps, weights and f32 operations in the same order, so the
/// same bytes; tested), on contiguous RGB rows instead of its generic
/// per-pixel access. MTCNN resizes every pyramid level and every
/// candidate: `image`'s resize was a fifth of a detection. Exactness
/// matters: a box half a pixel off moves a face's embedding by ~0.08.
pub fn resize(
    img: &image::RgbImage,
    window: Option<[u32; 4]>,
    w: u32,
    h: u32,
) -> Result<image::RgbImage> {
    let [x0, y0, sw, sh] = window.unwrap_or([0, 0, img.width(), img.height()]);
    let fits = |a: u32, len: u32, whole: u32| a.checked_add(len).is_some_and(|e| e <= whole);
    if window.is_some()
        && (sw == 0 || sh == 0 || !fits(x0, sw, img.width()) || !fits(y0, sh, img.height()))
    {
        return Err(Error::Usage(format!(
            "window {:?} is outside the {}x{} image",
            [x0, y0, sw, sh],
            img.width(),
            img.height()
        )));
    }
    let (w, h) = (w.max(1), h.max(1));
    if sw == 0 || sh == 0 {
        return Ok(image::RgbImage::new(w, h));
    }
    if (w, h) == (sw, sh) {
        return Ok(image::imageops::crop_imm(img, x0, y0, sw, sh).to_image());
    }
    let (x0, y0, sw, sh) = (x0 as usize, y0 as usize, sw as usize, sh as usize);
    let (w, h) = (w as usize, h as usize);
    let stride = img.width() as usize * 3;
    let raw = img.as_raw();
    let acc = accumulate_fn();
    let big = w * h >= RESIZE_PARALLEL_FROM;
    // Vertical pass into f32 rows (width sw, height h), as image's
    // vertical_sample. Each row has one float of padding so the horizontal
    // pass can read a pixel as four lanes.
    let vt = Taps::triangle(sh, h);
    let row_len = sw * 3 + 1;
    let mut tmp = vec![0.0f32; row_len * h];
    let vertical = |(oy, row): (usize, &mut [f32])| {
        let (left, wts) = vt.get(oy);
        for (i, &wt) in wts.iter().enumerate() {
            let start = (y0 + left + i) * stride + x0 * 3;
            if let (Some(src), Some(dst)) = (raw.get(start..start + sw * 3), row.get_mut(..sw * 3))
            {
                acc(dst, src, wt);
            }
        }
    };
    // Horizontal pass, rounded to bytes, as image's horizontal_sample: the
    // same products added in the same order per channel, three channels
    // (and a padding lane) at once.
    let ht = Taps::triangle(sw, w);
    let mut out = vec![0u8; w * h * 3];
    let horizontal = |(row, dst): (&[f32], &mut [u8])| horizontal_row(row, dst, &ht);
    if big {
        use rayon::prelude::*;
        tmp.par_chunks_mut(row_len).enumerate().for_each(vertical);
        tmp.par_chunks(row_len)
            .zip(out.par_chunks_mut(w * 3))
            .for_each(horizontal);
    } else {
        tmp.chunks_mut(row_len).enumerate().for_each(vertical);
        tmp.chunks(row_len)
            .zip(out.chunks_mut(w * 3))
            .for_each(horizontal);
    }
    image::RgbImage::from_raw(w as u32, h as u32, out)
        .ok_or_else(|| Error::Usage("resized image of unexpected size".into()))
}

/// One row of [`resize`]'s horizontal pass: each output pixel is the sum
/// of its taps' pixels (three channels and a padding lane) times their
/// weights, in tap order, rounded to bytes by `round_byte`.
fn horizontal_row(row: &[f32], dst: &mut [u8], ht: &Taps) {
    #[cfg(target_arch = "x86_64")]
    {
        horizontal_row_sse2(row, dst, ht);
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (ox, px) in dst.chunks_exact_mut(3).enumerate() {
        let (left, wts) = ht.get(ox);
        let mut t = [0.0f32; 4];
        for (i, &wt) in wts.iter().enumerate() {
            let j = (left + i) * 3;
            if let Some(p) = row.get(j..j + 4) {
                for (t, &p) in t.iter_mut().zip(p) {
                    *t += p * wt;
                }
            }
        }
        for (d, v) in px.iter_mut().zip(t) {
            *d = round_byte(v);
        }
    }
}

/// `horizontal_row` with a pixel's four lanes in one SSE2 register (part
/// of every x86-64 CPU): the same multiplies and adds in the same order
/// per lane (no fused multiply-add), and `round_byte` lane for lane, so
/// the same bytes (tested against `image`). It was a third of a search
/// request's resizing, most of it the scalar rounding.
#[cfg(target_arch = "x86_64")]
fn horizontal_row_sse2(row: &[f32], dst: &mut [u8], ht: &Taps) {
    use std::arch::x86_64::*;
    for (ox, px) in dst.chunks_exact_mut(3).enumerate() {
        let (left, wts) = ht.get(ox);
        // SAFETY: SSE2 is part of x86-64; every load reads four floats
        // inside `row` (checked before it).
        let bytes = unsafe {
            let mut t = _mm_setzero_ps();
            for (i, &wt) in wts.iter().enumerate() {
                let j = (left + i) * 3;
                if j + 4 <= row.len() {
                    let p = _mm_loadu_ps(row.as_ptr().add(j));
                    t = _mm_add_ps(t, _mm_mul_ps(p, _mm_set1_ps(wt)));
                }
            }
            // round_byte: clamp (a NaN lane becomes 0, as `NaN as u8`
            // does), truncate, and add one where the fraction is >= 0.5.
            let v = _mm_min_ps(_mm_max_ps(t, _mm_setzero_ps()), _mm_set1_ps(255.0));
            let whole = _mm_cvttps_epi32(v);
            let frac = _mm_sub_ps(v, _mm_cvtepi32_ps(whole));
            let up = _mm_castps_si128(_mm_cmpge_ps(frac, _mm_set1_ps(0.5)));
            let r = _mm_sub_epi32(whole, up);
            let b = _mm_packus_epi16(_mm_packs_epi32(r, r), _mm_setzero_si128());
            (_mm_cvtsi128_si32(b) as u32).to_le_bytes()
        };
        px.copy_from_slice(&bytes[..3]);
    }
}

/// Output pixels from which [`resize`] splits its rows across threads (a
/// 640 px pyramid level; candidates' 24 and 48 px crops stay on one).
const RESIZE_PARALLEL_FROM: usize = 1 << 15;

/// `v` clamped to 0..=255 and rounded half away from zero, as
/// `v.clamp(0.0, 255.0).round() as u8` (image's rounding) without the
/// libm call `round` is off SSE4.1: a fifth of a resize. For v in 0..=255,
/// `v - trunc(v)` is exact, so comparing it with 0.5 rounds exactly as
/// `round` does; NaN gives 0 both ways.
#[cfg(any(not(target_arch = "x86_64"), test))]
fn round_byte(v: f32) -> u8 {
    let v = v.clamp(0.0, 255.0);
    let whole = v as u8;
    whole + u8::from(v - whole as f32 >= 0.5)
}

/// `row[i] += src[i] * wt`, on AVX2 where the CPU has it (the products and
/// sums are the same f32 operations, so the same bits, four or eight lanes
/// at a time).
fn accumulate_fn() -> fn(&mut [f32], &[u8], f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return |row, src, wt| unsafe { accumulate_avx2(row, src, wt) };
    }
    accumulate
}

#[inline(always)]
fn accumulate(row: &mut [f32], src: &[u8], wt: f32) {
    for (t, &v) in row.iter_mut().zip(src) {
        *t += v as f32 * wt;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_avx2(row: &mut [f32], src: &[u8], wt: f32) {
    accumulate(row, src, wt)
}

/// The triangle filter's taps for every output index of a `new`-long axis
/// resampled from `old` pixels, as image's samplers compute them, with the
/// zero weights at either end left out (adding 0 * x to these non-negative
/// sums leaves every bit as it was).
struct Taps {
    /// (first input index, start in `weights`, count) per output index.
    at: Vec<(usize, usize, usize)>,
    weights: Vec<f32>,
}

impl Taps {
    fn triangle(old: usize, new: usize) -> Taps {
        let mut ws = Vec::new();
        let mut t = Taps {
            at: Vec::with_capacity(new),
            weights: Vec::new(),
        };
        for o in 0..new {
            let mut left = triangle_taps(o, old, new, &mut ws);
            let lead = ws.iter().take_while(|&&x| x == 0.0).count();
            let kept = ws.len() - lead - ws.iter().rev().take_while(|&&x| x == 0.0).count();
            let kept = if lead == ws.len() { 0 } else { kept };
            left += lead;
            t.at.push((left, t.weights.len(), kept));
            t.weights
                .extend_from_slice(ws.get(lead..lead + kept).unwrap_or(&[]));
        }
        t
    }

    /// First input index and weights of output index `o`.
    fn get(&self, o: usize) -> (usize, &[f32]) {
        match self.at.get(o) {
            Some(&(left, s, n)) => (left, self.weights.get(s..s + n).unwrap_or(&[])),
            None => (0, &[]),
        }
    }
}

/// The triangle filter's taps for output index `o` of `new` from `old`
/// pixels, as image's samplers compute them: the normalised weights into
/// `ws`, the first input index returned.
fn triangle_taps(o: usize, old: usize, new: usize, ws: &mut Vec<f32>) -> usize {
    let ratio = old as f32 / new as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let support = sratio;
    let input = (o as f32 + 0.5) * ratio;
    let left = ((input - support).floor() as i64).clamp(0, old as i64 - 1);
    let right = ((input + support).ceil() as i64).clamp(left + 1, old as i64);
    let input = input - 0.5;
    ws.clear();
    let mut sum = 0.0;
    for i in left..right {
        let x = (i as f32 - input) / sratio;
        let wt = if x.abs() < 1.0 { 1.0 - x.abs() } else { 0.0 };
        ws.push(wt);
        sum += wt;
    }
    for wt in ws.iter_mut() {
        *wt /= sum;
    }
    left as usize
}

/// A crop (x, y, width, height) resized to `size` x `size`, prewhitened, as
/// a 1 x size x size x 3 NHWC tensor.
pub fn face_input(img: &image::RgbImage, crop: [u32; 4], size: u32) -> Result<Tensor> {
    Tensor::f32(
        vec![1, size as usize, size as usize, 3],
        face_pixels(img, crop, size)?,
    )
}

/// [`face_input`]'s floats (size x size x 3, HWC), without the tensor: the
/// server queues them for a batch and concatenates them once.
pub fn face_pixels(img: &image::RgbImage, crop: [u32; 4], size: u32) -> Result<Vec<f32>> {
    let [x, y, w, h] = crop;
    if w == 0 || h == 0 || x + w > img.width() || y + h > img.height() {
        return Err(Error::Usage(format!(
            "crop {crop:?} is outside the {}x{} image",
            img.width(),
            img.height()
        )));
    }
    let resized = resize(img, Some([x, y, w, h]), size, size)?;
    let mut v: Vec<f32> = resized.as_raw().iter().map(|&b| b as f32).collect();
    prewhiten(&mut v);
    Ok(v)
}

/// The centred largest square of an image: the crop for a picture that is
/// already a face (no detector involved).
pub fn center_square(img: &image::RgbImage) -> [u32; 4] {
    let side = img.width().min(img.height());
    [
        (img.width() - side) / 2,
        (img.height() - side) / 2,
        side,
        side,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `resize` gives the very bytes of image's Triangle resize, down and
    /// up, square and not, and through a window.
    #[test]
    fn resize_equals_image_triangle_byte_for_byte() {
        let mut seed = 12345u32;
        let img = image::RgbImage::from_fn(203, 117, |_, _| {
            let mut px = [0u8; 3];
            for p in &mut px {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                *p = (seed >> 24) as u8;
            }
            image::Rgb(px)
        });
        for (w, h) in [
            (12, 12),
            (24, 24),
            (48, 48),
            (144, 83),
            (640, 300),
            (203, 60),
            (13, 117),
        ] {
            let want = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
            let got = resize(&img, None, w, h).unwrap();
            assert!(got == want, "{w}x{h}");
        }
        let view = image::imageops::crop_imm(&img, 30, 20, 77, 64).to_image();
        let want = image::imageops::resize(&view, 24, 24, image::imageops::FilterType::Triangle);
        assert!(resize(&img, Some([30, 20, 77, 64]), 24, 24).unwrap() == want);
        assert!(resize(&img, Some([200, 20, 77, 64]), 24, 24).is_err());
    }

    #[test]
    fn horizontal_pass_rounds_as_round_byte() {
        // One tap of weight 1 per output pixel: the pass is the rounding.
        let vals = [
            -1.0f32,
            -0.0,
            0.0,
            1e-8,
            0.49999997,
            0.5,
            1.5,
            2.5,
            127.5,
            254.49998,
            254.5,
            255.0,
            255.5,
            300.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            99.99999,
        ];
        let n = vals.len() / 3;
        let mut row: Vec<f32> = vals[..n * 3].to_vec();
        row.push(0.0);
        let mut dst = vec![0u8; n * 3];
        horizontal_row(&row, &mut dst, &Taps::triangle(n, n));
        let want: Vec<u8> = vals[..n * 3].iter().map(|&v| round_byte(v)).collect();
        assert_eq!(dst, want);
    }

    #[test]
    fn prewhiten_matches_facenet_formula() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        prewhiten(&mut x);
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        // A constant image has std 0: divided by 1/sqrt(n), not by zero.
        let mut c = vec![5.0; 4];
        prewhiten(&mut c);
        assert!(c.iter().all(|v| *v == 0.0));
    }

    fn jpeg() -> Vec<u8> {
        let img = image::RgbImage::from_fn(240, 200, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        });
        let mut out = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn a_jpeg_is_complete_or_refused_whatever_follows_it() {
        let good = jpeg();
        assert_eq!(jpeg_eoi(&good), Some(good.len() - 2));
        let whole = decode_bytes(&good).unwrap();
        // Data after the image (motion photos, padding): the same pixels.
        let mut trailing = good.clone();
        trailing.extend(std::iter::repeat_n(0x5A, 5000));
        trailing.extend([0xFF, 0xD9, 0xFF, 0xD8]);
        assert_eq!(decode_bytes(&trailing).unwrap(), whole);
        // Cut in the scan, with and without an EOI appended.
        for cut in [good.len() / 2, good.len() - 200] {
            let mut half = good[..cut].to_vec();
            assert!(decode_bytes(&half).is_err(), "cut at {cut}");
            half.extend([0xFF, 0xD9]);
            assert!(decode_bytes(&half).is_err(), "cut at {cut} + EOI");
        }
    }

    #[test]
    fn a_png_colour_profile_is_never_inflated() {
        // 64 MB of profile deflate to about 64 KB.
        let mut out = vec![];
        {
            let mut info = png::Info::with_size(64, 64);
            info.color_type = png::ColorType::Rgb;
            info.bit_depth = png::BitDepth::Eight;
            info.icc_profile = Some(vec![0u8; 64 << 20].into());
            let enc = png::Encoder::with_info(&mut out, info).unwrap();
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&vec![128u8; 64 * 64 * 3]).unwrap();
        }
        assert!(out.len() < 1 << 20, "{} bytes", out.len());
        // Read, with the profile skipped: the decode holds the pixels and
        // at most MAX_HEADER_BYTES more (the limit it runs under), and the
        // pixels are those written.
        assert_eq!(dimensions(&out).unwrap().0, 64);
        let img = decode_bytes(&out).unwrap();
        assert_eq!(img.get_pixel(10, 10).0, [128, 128, 128]);
        // Grey with alpha and a palette come out as RGB too.
        for (ct, px) in [
            (png::ColorType::GrayscaleAlpha, vec![77u8, 255]),
            (png::ColorType::Rgba, vec![1u8, 2, 3, 4]),
        ] {
            let mut out = vec![];
            {
                let mut e = png::Encoder::new(&mut out, 3, 2);
                e.set_color(ct);
                let mut w = e.write_header().unwrap();
                w.write_image_data(&px.repeat(6)).unwrap();
            }
            let img = decode_bytes(&out).unwrap();
            let want = if px.len() == 2 {
                [77, 77, 77]
            } else {
                [1, 2, 3]
            };
            assert_eq!(img.get_pixel(2, 1).0, want);
        }
    }
}
