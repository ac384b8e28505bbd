//! Drawing detections: rectangles and labels ("class 0.93") in a built-in
//! 5x7 bitmap font (upper-case letters, digits, `.`, `-`, `_`, `:`, space;
//! lower case is drawn upper case, other characters as a box), written as
//! PNG or JPEG by the file extension.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::boxes::BBox;
use crate::error::{Error, Result};

/// 5x7 glyph rows (bit 4 = leftmost column).
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// Width in pixels of `text` at `scale` (6 columns a character, less the last gap).
pub fn text_width(text: &str, scale: u32) -> u32 {
    (text.chars().count() as u32 * 6).saturating_sub(1) * scale
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Draws `text` with its top-left at `(x, y)`, each font pixel `scale` pixels wide.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, color: Rgb<u8>) {
    let s = i64::from(scale.max(1));
    for (k, ch) in text.chars().enumerate() {
        let g = glyph(ch);
        let x0 = x + k as i64 * 6 * s;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..s {
                        for dx in 0..s {
                            put(img, x0 + col * s + dx, y + row as i64 * s + dy, color);
                        }
                    }
                }
            }
        }
    }
}

/// Draws a rectangle outline over the pixels `xmin..=xmax`, `ymin..=ymax` (0-based).
pub fn draw_rect(img: &mut RgbImage, bbox: [i64; 4], thickness: u32, color: Rgb<u8>) {
    let [x0, y0, x1, y1] = bbox;
    for t in 0..i64::from(thickness) {
        for x in x0..=x1 {
            put(img, x, y0 + t, color);
            put(img, x, y1 - t, color);
        }
        for y in y0..=y1 {
            put(img, x0 + t, y, color);
            put(img, x1 - t, y, color);
        }
    }
}

/// A distinct colour for class `k`.
pub fn class_color(k: usize) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; 8] = [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ];
    Rgb(PALETTE[k % PALETTE.len()])
}

/// A box to draw: VOC 1-based inclusive pixel box, class index and name, score.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// Box in VOC 1-based inclusive pixels.
    pub bbox: BBox,
    /// Class index (picks the colour).
    pub class: usize,
    /// Class name.
    pub name: String,
    /// Score.
    pub score: f32,
}

/// Draws labelled boxes onto `img`: a 2-pixel outline and, above it (or
/// inside when at the top edge), a filled label "name 0.93" in white.
pub fn draw_detections(img: &mut RgbImage, dets: &[Labelled]) {
    for d in dets {
        let color = class_color(d.class);
        let b = [
            d.bbox.xmin.round() as i64 - 1,
            d.bbox.ymin.round() as i64 - 1,
            d.bbox.xmax.round() as i64 - 1,
            d.bbox.ymax.round() as i64 - 1,
        ];
        draw_rect(img, b, 2, color);
        let text = format!("{} {:.2}", d.name, d.score);
        let (tw, th) = (i64::from(text_width(&text, 1)) + 2, 9);
        let ty = if b[1] >= th { b[1] - th } else { b[1] };
        for y in ty..ty + th {
            for x in b[0]..b[0] + tw {
                put(img, x, y, color);
            }
        }
        draw_text(img, b[0] + 1, ty + 1, &text, 1, Rgb([255, 255, 255]));
    }
}

/// Writes `img` as PNG or JPEG (by `path`'s extension).
pub fn save_image(img: &RgbImage, path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let format = match ext.as_str() {
        "png" => image::ImageFormat::Png,
        "jpg" | "jpeg" => image::ImageFormat::Jpeg,
        _ => {
            return Err(Error::Image {
                path: path.to_path_buf(),
                reason: format!("unsupported extension {ext:?} (png, jpg or jpeg)"),
            })
        }
    };
    img.save_with_format(path, format)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_box_and_label() {
        let mut img = RgbImage::new(64, 48);
        let d = Labelled {
            bbox: BBox::new(11.0, 21.0, 40.0, 40.0),
            class: 0,
            name: "star".into(),
            score: 0.5,
        };
        draw_detections(&mut img, &[d]);
        let red = class_color(0);
        // Box corners (0-based 10, 20) and (39, 39).
        assert_eq!(*img.get_pixel(10, 20), red);
        assert_eq!(*img.get_pixel(39, 39), red);
        assert_eq!(*img.get_pixel(25, 30), Rgb([0, 0, 0]));
        // Label band above the box holds white text pixels.
        let white = (11..20)
            .flat_map(|y| (10..40).map(move |x| (x, y)))
            .filter(|&(x, y)| *img.get_pixel(x, y) == Rgb([255, 255, 255]))
            .count();
        assert!(white > 20, "{white}");
        let dir = tempfile::tempdir().unwrap();
        save_image(&img, &dir.path().join("a.png")).unwrap();
        save_image(&img, &dir.path().join("a.jpg")).unwrap();
        let back = image::open(dir.path().join("a.png")).unwrap().to_rgb8();
        assert_eq!(back, img);
        assert!(save_image(&img, &dir.path().join("a.bmp")).is_err());
    }

    #[test]
    fn glyphs_are_distinct() {
        let chars: Vec<char> = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_: "
            .chars()
            .collect();
        for (i, a) in chars.iter().enumerate() {
            for b in &chars[i + 1..] {
                assert_ne!(glyph(*a), glyph(*b), "{a} {b}");
            }
        }
    }
}
