//! Image files decoded in full or refused, the same way for training,
//! evaluation and prediction: JPEG through zune-jpeg in strict mode (a
//! truncated or corrupt entropy-coded stream is an error, not grey
//! pixels, as PIL refuses truncated files by default) and PNG through the
//! `png` decoder, with the size read from the header and bounded before
//! any pixel is allocated.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};
use kiln_nn::bad_files::BadFiles;
use ndarray::Array3;
use rayon::prelude::*;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::error::{Error, Result};

/// Longest side of an image a reader accepts, in pixels.
pub const MAX_IMAGE_SIDE: usize = 16_384;

/// Decodes a JPEG or PNG file to an RGB `[3, H, W]` f32 tensor with values
/// in `0..=255`; anything that does not decode in full is an error naming
/// the file.
pub fn load_image(path: &Path) -> Result<Array3<f32>> {
    Ok(rgb_to_chw(&load_rgb(path)?))
}

/// Decodes a JPEG or PNG file to an RGB image, in full or not at all.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes).map_err(|reason| Error::Image {
        path: path.to_path_buf(),
        reason,
    })
}

/// Decodes every file of `paths` in full (in parallel; the pixels are
/// dropped) and holds the unusable ones to `max_bad_share` of them
/// (`setting` names where it was set): the usable paths in order and the
/// `SKIPPING` line naming the others, if any. An error when more are
/// unusable, or none is usable.
pub fn verify_images(
    paths: &[PathBuf],
    max_bad_share: f64,
    setting: &str,
) -> Result<(Vec<PathBuf>, Option<String>)> {
    let checked: Vec<Option<Error>> = paths.par_iter().map(|p| load_rgb(p).err()).collect();
    let mut bad = BadFiles::new("the images given", paths.len());
    let mut usable = Vec::with_capacity(paths.len());
    for (path, error) in paths.iter().zip(checked) {
        match error {
            None => usable.push(path.clone()),
            Some(e) => bad.push(path, e),
        }
    }
    let skipped = bad
        .check(max_bad_share, setting)
        .map_err(kiln_nn::Error::from)?;
    if usable.is_empty() {
        return Err(Error::invalid("predict", "no usable image"));
    }
    Ok((usable, skipped))
}

/// Decodes JPEG or PNG bytes in full; the reason when they do not decode.
pub fn decode_image(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => decode_jpeg(bytes),
        Ok(ImageFormat::Png) => decode_png(bytes),
        Ok(other) => Err(format!("{other:?} images are not supported (JPEG or PNG)")),
        Err(_) => Err("not a JPEG or PNG image".into()),
    }
}

fn check_size(format: &str, width: usize, height: usize) -> std::result::Result<(), String> {
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(format!(
            "{format}: {width}x{height} pixels is outside 1..={MAX_IMAGE_SIDE} per side"
        ));
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_IMAGE_SIDE)
        .set_max_height(MAX_IMAGE_SIDE)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| format!("JPEG: {e:?}"))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| "JPEG: no frame header".to_string())?;
    check_size("JPEG", width, height)?;
    let pixels = decoder.decode().map_err(|e| format!("JPEG: {e:?}"))?;
    if pixels.len() != width * height * 3 {
        return Err(format!(
            "JPEG: decoded {} bytes for {width}x{height} RGB pixels",
            pixels.len()
        ));
    }
    RgbImage::from_raw(width as u32, height as u32, pixels)
        .ok_or_else(|| format!("JPEG: {width}x{height} pixels do not fit an image"))
}

fn decode_png(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let reader = || image::ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png);
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| format!("PNG: {e}"))?;
    check_size("PNG", width as usize, height as usize)?;
    let img = reader().decode().map_err(|e| format!("PNG: {e}"))?;
    Ok(img.to_rgb8())
}

/// An RGB image as a `[3, H, W]` f32 tensor.
pub fn rgb_to_chw(img: &RgbImage) -> Array3<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = Array3::zeros((3, h, w));
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[[c, y as usize, x as usize]] = f32::from(p.0[c]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_jpeg() -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/voc-tiny/JPEGImages/000001.jpg");
        std::fs::read(p).unwrap()
    }

    fn png_bytes() -> Vec<u8> {
        let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn whole_files_decode() {
        let img = decode_image(&fixture_jpeg()).unwrap();
        assert_eq!(img.dimensions(), (64, 64));
        let img = decode_image(&png_bytes()).unwrap();
        assert_eq!(img.dimensions(), (40, 30));
        assert_eq!(img.get_pixel(3, 2).0, [3, 2, 7]);
        // Grey JPEGs come out as RGB.
        let grey = image::GrayImage::from_fn(16, 8, |x, _| image::Luma([x as u8 * 10]));
        let mut jpeg = Cursor::new(Vec::new());
        grey.write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
        let img = decode_image(jpeg.get_ref()).unwrap();
        assert_eq!(img.dimensions(), (16, 8));
        let p = img.get_pixel(10, 3).0;
        assert!(
            p[0] == p[1] && p[1] == p[2] && p[0].abs_diff(100) < 8,
            "{p:?}"
        );
    }

    #[test]
    fn truncated_files_are_refused() {
        let jpeg = fixture_jpeg();
        for keep in [jpeg.len() * 3 / 4, jpeg.len() / 2, 700, 200] {
            let e = decode_image(&jpeg[..keep]).unwrap_err();
            assert!(e.starts_with("JPEG"), "{keep}: {e}");
        }
        let png = png_bytes();
        for keep in [png.len() - 20, png.len() / 2, 40] {
            let e = decode_image(&png[..keep]).unwrap_err();
            assert!(e.starts_with("PNG"), "{keep}: {e}");
        }
    }

    #[test]
    fn mistyped_and_oversized_files_are_refused() {
        assert!(decode_image(b"GIF89a....")
            .unwrap_err()
            .contains("not supported"));
        assert!(decode_image(b"hello")
            .unwrap_err()
            .contains("not a JPEG or PNG"));
        let mut wide = Cursor::new(Vec::new());
        RgbImage::new(MAX_IMAGE_SIDE as u32 + 1, 1)
            .write_to(&mut wide, ImageFormat::Png)
            .unwrap();
        let e = decode_image(wide.get_ref()).unwrap_err();
        assert!(e.contains("16385x1 pixels is outside"), "{e}");
    }
}
