//! The VOC reader, scoring and drawing on the committed tiny VOC-layout
//! fixture (`fixtures/voc-tiny`, made by
//! `synth_shapes.py --out voc-tiny --images 3 --size 64 --seed 5`).

use std::path::{Path, PathBuf};

use kiln_detection::augment::{Sample, SsdAugment};
use kiln_detection::eval::{score, write_detections, FileDetection, Metric};
use kiln_detection::voc::{load_image, parse_annotation, VocDataset, VOC_CLASSES};
use kiln_detection::Error;
use rand::SeedableRng;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/voc-tiny")
}

#[test]
fn reads_tiny_fixture() {
    let ds = VocDataset::open(&fixture(), "trainval", None).unwrap();
    assert_eq!(
        ds.classes,
        ["circle", "square", "triangle", "star", "ellipse", "cross"]
    );
    assert_eq!(ds.ids, ["000001", "000002", "000003"]);
    let anns = ds.annotations().unwrap();
    let objects: usize = anns.iter().map(|a| a.objects.len()).sum();
    assert_eq!(objects, 11);
    assert_eq!(
        anns.iter()
            .flat_map(|a| &a.objects)
            .filter(|o| o.difficult)
            .count(),
        2
    );
    assert_eq!(
        anns.iter()
            .flat_map(|a| &a.objects)
            .filter(|o| o.truncated)
            .count(),
        2
    );
    let first = &anns[0].objects[0];
    assert_eq!((first.name.as_str(), first.class), ("ellipse", 4));
    assert_eq!(first.bbox.to_array(), [13.0, 24.0, 44.0, 63.0]);
    assert_eq!(first.pixel_box().to_array(), [12.0, 23.0, 44.0, 63.0]);
    let (img, a) = ds.sample(0).unwrap();
    assert_eq!(img.shape(), &[3, 64, 64]);
    assert_eq!((a.width, a.height), (64, 64));
    assert!(img.iter().all(|v| (0.0..=255.0).contains(v)));
    // Through the SSD pipeline.
    let s = Sample {
        image: img,
        boxes: a.objects.iter().map(|o| o.pixel_box()).collect(),
        labels: a.objects.iter().map(|o| o.class + 1).collect(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let out = SsdAugment::new(32).apply(s, &mut rng).unwrap();
    assert_eq!(out.image.shape(), &[3, 32, 32]);
}

#[test]
fn class_list_can_be_given() {
    let voc: Vec<String> = VOC_CLASSES.iter().map(|s| s.to_string()).collect();
    let ds = VocDataset::open(&fixture(), "train", Some(voc)).unwrap();
    let e = ds.annotation(0).unwrap_err();
    assert!(matches!(e, Error::UnknownClass { .. }), "{e}");
    assert!(e.to_string().contains("000001.xml"), "{e}");
}

fn write_voc(dir: &Path, xml: &str) -> PathBuf {
    for d in ["Annotations", "JPEGImages", "ImageSets/Main"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("classes.txt"), "circle\nstar\n").unwrap();
    std::fs::write(dir.join("ImageSets/Main/test.txt"), "a\n").unwrap();
    let p = dir.join("Annotations/a.xml");
    std::fs::write(&p, xml).unwrap();
    p
}

const GOOD: &str = "<annotation><size><width>8</width><height>6</height><depth>3</depth></size>\
<object><name>star</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>8</xmax><ymax>6</ymax></bndbox></object></annotation>";

#[test]
fn clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let classes = vec!["circle".to_string(), "star".to_string()];
    let p = write_voc(dir.path(), GOOD);
    let a = parse_annotation(&p, &classes).unwrap();
    assert!(a.objects[0].difficult && a.objects[0].class == 1);

    let cases = [
        ("<annotation><size>", "malformed annotation"),
        ("<annotation></annotation>", "missing <size>"),
        (&GOOD.replace("star", "dog"), "unknown class \"dog\""),
        (
            &GOOD.replace("<xmax>8</xmax>", "<xmax>9</xmax>"),
            "outside the image",
        ),
        (
            &GOOD.replace("<xmin>1</xmin>", "<xmin>x</xmin>"),
            "<xmin> is not a number",
        ),
        (
            &GOOD.replace("<xmin>1</xmin>", ""),
            "object 0: missing <xmin>",
        ),
    ];
    for (xml, want) in cases {
        std::fs::write(&p, xml).unwrap();
        let e = parse_annotation(&p, &classes).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("a.xml"),
            "{e} (wanted {want})"
        );
    }
    // Missing image, then a corrupt one.
    std::fs::write(&p, GOOD).unwrap();
    let ds = VocDataset::open(dir.path(), "test", None).unwrap();
    let e = ds.sample(0).unwrap_err().to_string();
    assert!(e.contains("a.jpg"), "{e}");
    std::fs::write(
        dir.path().join("JPEGImages/a.jpg"),
        b"\xff\xd8\xff\xe0 not a jpeg",
    )
    .unwrap();
    let e = ds.sample(0).unwrap_err();
    assert!(
        matches!(e, Error::Image { .. }) && e.to_string().contains("a.jpg"),
        "{e}"
    );
    let e = load_image(&dir.path().join("nope.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.png"), "{e}");
    // A missing split.
    let e = VocDataset::open(dir.path(), "val", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("val.txt"), "{e}");
}

#[test]
fn scores_ground_truth_as_perfect() {
    let ds = VocDataset::open(&fixture(), "trainval", None).unwrap();
    let mut dets = Vec::new();
    for a in ds.annotations().unwrap() {
        for o in &a.objects {
            dets.push(FileDetection {
                image_id: a.id.clone(),
                class: o.name.clone(),
                score: 0.9,
                bbox: o.bbox,
            });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("dets.txt");
    write_detections(&f, &dets).unwrap();
    for m in [Metric::Voc07, Metric::Area] {
        let r = score(&fixture(), "trainval", &f, m).unwrap();
        assert!((r.map - 1.0).abs() < 1e-12, "{r}");
        assert!(r.to_json().unwrap().contains("\"map\""));
    }
    std::fs::write(
        &f,
        "000001 circle 0.9 1 1 5 5\n\n000009 circle 0.5 1 1 5 5\n",
    )
    .unwrap();
    let e = score(&fixture(), "trainval", &f, Metric::Area)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dets.txt:3") && e.contains("000009"), "{e}");
}

#[test]
fn reads_shapes_mini_when_present() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/shapes-mini");
    let root = if root.exists() {
        root
    } else {
        PathBuf::from("/work/shared/data/shapes-mini")
    };
    if !root.exists() {
        eprintln!("shapes-mini not present; skipped");
        return;
    }
    let ds = VocDataset::open(&root, "test", None).unwrap();
    assert!(!ds.is_empty());
    for i in 0..ds.len().min(5) {
        let (img, a) = ds.sample(i).unwrap();
        assert_eq!(img.shape(), &[3, a.height, a.width]);
    }
    ds.annotations().unwrap();
}

#[test]
fn draws_fixture_ground_truth() {
    use kiln_detection::draw::{draw_detections, save_image, Labelled};
    let ds = VocDataset::open(&fixture(), "trainval", None).unwrap();
    let (img, a) = ds.sample(0).unwrap();
    let mut rgb = kiln_detection::voc::chw_to_rgb(&img).unwrap();
    let before = rgb.clone();
    let boxes: Vec<Labelled> = a
        .objects
        .iter()
        .map(|o| Labelled {
            bbox: o.bbox,
            class: o.class,
            name: o.name.clone(),
            score: 1.0,
        })
        .collect();
    draw_detections(&mut rgb, &boxes);
    assert_ne!(rgb, before);
    let dir = tempfile::tempdir().unwrap();
    // KILN_DRAW_OUT=path keeps a copy for looking at.
    let out = std::env::var_os("KILN_DRAW_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("gt.png"));
    save_image(&rgb, &out).unwrap();
    assert_eq!(image::open(&out).unwrap().to_rgb8(), rgb);
}
