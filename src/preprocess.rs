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

/// Decode JPEG or PNG bytes with limits on their size. Whether a JPEG is
/// complete is the decoder's call (strict mode: a scan whose data runs out
/// is an error; image's default fills the missing rows with grey and
/// succeeds), so data after a complete image (phones' "motion photos") is
/// fine and a cut-off file is not. A file cut inside the scan and then
/// given an end-of-image marker still decodes (zune-jpeg stops at the
/// marker without saying the scan was short).
pub fn decode_bytes(bytes: &[u8]) -> Result<image::RgbImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Format(format!("unreadable image: {e}")))?;
    let format = reader.format();
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| Error::Format(format!("unreadable image: {e}")))?;
    if (w as u64) * (h as u64) > MAX_PIXELS {
        return Err(Error::Format(format!(
            "image of {w}x{h} pixels is over the limit of {MAX_PIXELS}"
        )));
    }
    if format == Some(image::ImageFormat::Jpeg) {
        return decode_jpeg_strict(bytes, w, h);
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

fn decode_jpeg_strict(bytes: &[u8], w: u32, h: u32) -> Result<image::RgbImage> {
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

/// A crop (x, y, width, height) resized to `size` x `size`, prewhitened, as
/// a 1 x size x size x 3 NHWC tensor.
pub fn face_input(img: &image::RgbImage, crop: [u32; 4], size: u32) -> Result<Tensor> {
    let [x, y, w, h] = crop;
    if w == 0 || h == 0 || x + w > img.width() || y + h > img.height() {
        return Err(Error::Usage(format!(
            "crop {crop:?} is outside the {}x{} image",
            img.width(),
            img.height()
        )));
    }
    let view = image::imageops::crop_imm(img, x, y, w, h).to_image();
    let resized = image::imageops::resize(&view, size, size, image::imageops::FilterType::Triangle);
    let mut v: Vec<f32> = resized.as_raw().iter().map(|&b| b as f32).collect();
    prewhiten(&mut v);
    Tensor::f32(vec![1, size as usize, size as usize, 3], v)
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
}
