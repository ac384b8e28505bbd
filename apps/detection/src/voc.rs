//! PASCAL VOC reader: `JPEGImages/<id>.jpg`, `Annotations/<id>.xml`,
//! `ImageSets/Main/<split>.txt`, and the class list (`classes.txt` when
//! present, or one given by the caller, e.g. [`VOC_CLASSES`]).
//!
//! Annotation boxes are kept as written: 1-based inclusive pixel
//! coordinates. [`Object::pixel_box`] gives the continuous 0-based box
//! (`xmin - 1, ymin - 1, xmax, ymax`) that augmentation and SSD use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_nn::bad_files::{is_file_id, BadFiles};
use ndarray::Array3;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::boxes::BBox;
use crate::error::{Error, Result};
pub use crate::image_file::{load_image, rgb_to_chw};

/// The 20 PASCAL VOC classes, in the devkit's order.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// One annotated object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Class name as written.
    pub name: String,
    /// Index of the class in the dataset's class list (0-based, no background).
    pub class: usize,
    /// Box in VOC 1-based inclusive pixel coordinates.
    pub bbox: BBox,
    /// Marked difficult (ignored by the VOC metric).
    pub difficult: bool,
    /// Marked truncated.
    pub truncated: bool,
}

impl Object {
    /// The box in continuous 0-based pixel coordinates (`xmin - 1, ymin - 1, xmax, ymax`).
    pub fn pixel_box(&self) -> BBox {
        BBox::new(
            self.bbox.xmin - 1.0,
            self.bbox.ymin - 1.0,
            self.bbox.xmax,
            self.bbox.ymax,
        )
    }
}

/// One image's annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// Image id (file stem).
    pub id: String,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Channels (`depth`), 3 when absent.
    pub depth: usize,
    /// The objects.
    pub objects: Vec<Object>,
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

fn text_of(node: roxmltree::Node<'_, '_>, name: &str, path: &Path, what: &str) -> Result<String> {
    child(node, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
        .ok_or_else(|| Error::Annotation {
            path: path.to_path_buf(),
            reason: format!("{what}: missing <{name}>"),
        })
}

fn number<T: std::str::FromStr>(
    node: roxmltree::Node<'_, '_>,
    name: &str,
    path: &Path,
    what: &str,
) -> Result<T> {
    let t = text_of(node, name, path, what)?;
    t.parse().map_err(|_| Error::Annotation {
        path: path.to_path_buf(),
        reason: format!("{what}: <{name}> is not a number: {t:?}"),
    })
}

fn flag(node: roxmltree::Node<'_, '_>, name: &str, path: &Path, what: &str) -> Result<bool> {
    match child(node, name) {
        None => Ok(false),
        Some(_) => Ok(number::<f32>(node, name, path, what)? != 0.0),
    }
}

/// Parses the text of an annotation XML file; `path` is used in errors and
/// its stem as the id when `<filename>` is absent.
pub fn parse_annotation_str(xml: &str, path: &Path, classes: &[String]) -> Result<Annotation> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| Error::Annotation {
        path: path.to_path_buf(),
        reason: format!("XML: {e}"),
    })?;
    let root = doc.root_element();
    if !root.has_tag_name("annotation") {
        return Err(Error::Annotation {
            path: path.to_path_buf(),
            reason: format!(
                "root element is <{}>, not <annotation>",
                root.tag_name().name()
            ),
        });
    }
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size = child(root, "size").ok_or_else(|| Error::Annotation {
        path: path.to_path_buf(),
        reason: "missing <size>".into(),
    })?;
    let width: usize = number(size, "width", path, "size")?;
    let height: usize = number(size, "height", path, "size")?;
    let depth: usize = if child(size, "depth").is_some() {
        number(size, "depth", path, "size")?
    } else {
        3
    };
    if width == 0 || height == 0 {
        return Err(Error::Annotation {
            path: path.to_path_buf(),
            reason: format!("image size {width}x{height} is empty"),
        });
    }
    let mut objects = Vec::new();
    for (index, obj) in root
        .children()
        .filter(|c| c.has_tag_name("object"))
        .enumerate()
    {
        let what = format!("object {index}");
        let name = text_of(obj, "name", path, &what)?;
        let class = classes
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| Error::UnknownClass {
                path: path.to_path_buf(),
                name: name.clone(),
                known: classes.join(","),
            })?;
        let bb = child(obj, "bndbox").ok_or_else(|| Error::Annotation {
            path: path.to_path_buf(),
            reason: format!("{what}: missing <bndbox>"),
        })?;
        let bbox = BBox::new(
            number(bb, "xmin", path, &what)?,
            number(bb, "ymin", path, &what)?,
            number(bb, "xmax", path, &what)?,
            number(bb, "ymax", path, &what)?,
        );
        let bad = |reason: &str| Error::BadBox {
            path: path.to_path_buf(),
            index,
            bbox: bbox.to_array(),
            width,
            height,
            reason: reason.to_string(),
        };
        if !bbox.to_array().iter().all(|v| v.is_finite()) {
            return Err(bad("non-finite coordinate"));
        }
        if bbox.xmin < 1.0
            || bbox.ymin < 1.0
            || bbox.xmax > width as f32
            || bbox.ymax > height as f32
        {
            return Err(bad("outside the image (1-based inclusive pixels)"));
        }
        if bbox.xmin > bbox.xmax || bbox.ymin > bbox.ymax {
            return Err(bad("min corner after max corner"));
        }
        objects.push(Object {
            name,
            class,
            bbox,
            difficult: flag(obj, "difficult", path, &what)?,
            truncated: flag(obj, "truncated", path, &what)?,
        });
    }
    Ok(Annotation {
        id,
        width,
        height,
        depth,
        objects,
    })
}

/// Reads and parses one annotation file.
pub fn parse_annotation(path: &Path, classes: &[String]) -> Result<Annotation> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_annotation_str(&text, path, classes)
}

/// Reads a class list: one name a line, blank lines and `#` comments skipped.
pub fn read_classes(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.contains(char::is_whitespace) {
            return Err(Error::line(
                path,
                i + 1,
                format!("class name {name:?} contains whitespace"),
            ));
        }
        if out.iter().any(|c| c == name) {
            return Err(Error::line(
                path,
                i + 1,
                format!("duplicate class {name:?}"),
            ));
        }
        out.push(name.to_string());
    }
    if out.is_empty() {
        return Err(Error::line(path, 1, "no classes"));
    }
    Ok(out)
}

/// A `[3, H, W]` tensor (values clamped to `0..=255`) as an RGB image.
pub fn chw_to_rgb(t: &Array3<f32>) -> Result<image::RgbImage> {
    if t.shape()[0] != 3 {
        return Err(Error::shape("chw_to_rgb", "[3, H, W]", t.shape()));
    }
    let (h, w) = (t.shape()[1], t.shape()[2]);
    let mut img = image::RgbImage::new(w as u32, h as u32);
    for (x, y, p) in img.enumerate_pixels_mut() {
        for c in 0..3 {
            p.0[c] = t[[c, y as usize, x as usize]].round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(img)
}

/// Loads the image at `path` that `annotation` describes; an error when
/// the decoded size differs from the annotated one.
pub fn load_annotated_image(path: &Path, annotation: &Annotation) -> Result<Array3<f32>> {
    let img = load_image(path)?;
    if img.shape()[1] != annotation.height || img.shape()[2] != annotation.width {
        return Err(Error::Image {
            path: path.to_path_buf(),
            reason: format!(
                "decoded {}x{} but the annotation says {}x{}",
                img.shape()[2],
                img.shape()[1],
                annotation.width,
                annotation.height
            ),
        });
    }
    Ok(img)
}

/// A VOC-layout dataset split.
#[derive(Debug, Clone)]
pub struct VocDataset {
    /// The dataset root (holding `JPEGImages`, `Annotations`, `ImageSets`).
    pub root: PathBuf,
    /// Class names, index = class id.
    pub classes: Vec<String>,
    /// The image set's name (`ImageSets/Main/<split>.txt`).
    pub split: String,
    /// Image ids of the split, in file order.
    pub ids: Vec<String>,
}

/// A split whose every annotation was read and every image decoded in
/// full ([`VocDataset::verify`]): what training, evaluation and
/// prediction use.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The split, with only its usable images.
    pub dataset: VocDataset,
    /// Their annotations, in split order.
    pub annotations: Vec<Annotation>,
    /// The `SKIPPING` line that counts and names the files left out, if
    /// any were (within the allowed share).
    pub skipped: Option<String>,
}

impl VocDataset {
    /// Opens split `split` (`ImageSets/Main/<split>.txt`) of the dataset at
    /// `root`. Classes are `classes` when given, else `root/classes.txt`,
    /// else [`VOC_CLASSES`].
    pub fn open(root: &Path, split: &str, classes: Option<Vec<String>>) -> Result<Self> {
        let classes = match classes {
            Some(c) => c,
            None => {
                let p = root.join("classes.txt");
                if p.exists() {
                    read_classes(&p)?
                } else {
                    VOC_CLASSES.iter().map(|s| s.to_string()).collect()
                }
            }
        };
        let list = root
            .join("ImageSets")
            .join("Main")
            .join(format!("{split}.txt"));
        let text = std::fs::read_to_string(&list).map_err(|e| Error::io(&list, e))?;
        let mut ids = Vec::new();
        let mut lines: HashMap<String, usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let mut parts = line.split_whitespace();
            let Some(id) = parts.next() else { continue };
            if parts.next().is_some() {
                return Err(Error::line(
                    &list,
                    i + 1,
                    format!("expected one image id, got {line:?}"),
                ));
            }
            if !is_file_id(id) {
                return Err(Error::line(
                    &list,
                    i + 1,
                    format!("image id {id:?} is not a file name"),
                ));
            }
            if let Some(first) = lines.insert(id.to_string(), i + 1) {
                return Err(Error::line(
                    &list,
                    i + 1,
                    format!("duplicate image id {id} (first on line {first})"),
                ));
            }
            ids.push(id.to_string());
        }
        Ok(VocDataset {
            root: root.to_path_buf(),
            classes,
            split: split.to_string(),
            ids,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Path of the annotation of image `id`.
    pub fn annotation_path(&self, id: &str) -> PathBuf {
        self.root.join("Annotations").join(format!("{id}.xml"))
    }

    /// Path of image `id`.
    pub fn image_path(&self, id: &str) -> PathBuf {
        self.root.join("JPEGImages").join(format!("{id}.jpg"))
    }

    /// The annotation of the `i`-th image of the split.
    pub fn annotation(&self, i: usize) -> Result<Annotation> {
        let id = self.id(i)?;
        let mut a = parse_annotation(&self.annotation_path(id), &self.classes)?;
        a.id = id.to_string();
        Ok(a)
    }

    /// All annotations of the split.
    pub fn annotations(&self) -> Result<Vec<Annotation>> {
        (0..self.len()).map(|i| self.annotation(i)).collect()
    }

    /// The `i`-th image and its annotation; errors when the decoded size
    /// differs from the annotated one.
    pub fn sample(&self, i: usize) -> Result<(Array3<f32>, Annotation)> {
        let a = self.annotation(i)?;
        let img = load_annotated_image(&self.image_path(&a.id), &a)?;
        Ok((img, a))
    }

    /// Reads every annotation and decodes every image in full (in
    /// parallel; the pixels are dropped), as training, evaluation and
    /// prediction check them, and holds the unusable ones to
    /// `max_bad_share` of the split (`setting` names where it was set).
    /// An error when more are unusable, or none is usable.
    pub fn verify(&self, max_bad_share: f64, setting: &str) -> Result<Verified> {
        // Each image's annotation, or the file at fault and why.
        let checked: Vec<std::result::Result<Annotation, (PathBuf, String)>> = (0..self.len())
            .into_par_iter()
            .map(|i| {
                let id = &self.ids[i];
                let a = self
                    .annotation(i)
                    .map_err(|e| (self.annotation_path(id), e.to_string()))?;
                let image = self.image_path(id);
                load_annotated_image(&image, &a).map_err(|e| (image, e.to_string()))?;
                Ok(a)
            })
            .collect();
        let mut bad = BadFiles::new(
            format!("image set {} of {}", self.split, self.root.display()),
            self.len(),
        );
        let mut annotations = Vec::with_capacity(checked.len());
        for c in checked {
            match c {
                Ok(a) => annotations.push(a),
                Err((path, e)) => bad.push(&path, e),
            }
        }
        let skipped = bad
            .check(max_bad_share, setting)
            .map_err(kiln_nn::Error::from)?;
        if annotations.is_empty() {
            return Err(Error::invalid(
                "VocDataset",
                format!("{}: no usable image", bad.dataset),
            ));
        }
        let mut dataset = self.clone();
        dataset.ids = annotations.iter().map(|a| a.id.clone()).collect();
        Ok(Verified {
            dataset,
            annotations,
            skipped,
        })
    }

    fn id(&self, i: usize) -> Result<&str> {
        self.ids.get(i).map(String::as_str).ok_or_else(|| {
            Error::invalid(
                "VocDataset",
                format!("image index {i} >= {}", self.ids.len()),
            )
        })
    }
}
