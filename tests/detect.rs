//! MTCNN with FaceAll's original models and with the converted ones, on the
//! real photos: a face in every training photo, Obama and Biden in
//! obama_and_biden.jpg, none in a blank image; the fast Caffe executor
//! finds what the reference executor finds.

mod common;

use common::*;
use faceall::detect::mtcnn::Mtcnn;

fn detector() -> Mtcnn {
    Mtcnn::load(&shared().join("models/mtcnn")).unwrap_or_else(|e| panic!("{e}"))
}

/// FaceAll's models on the reference Caffe executor: the faces "as before".
fn faceall_reference() -> Mtcnn {
    let mut m = detector();
    m.reference = true;
    m
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    w * h / (area(a) + area(b) - w * h)
}

fn photos() -> Vec<std::path::PathBuf> {
    let mut photos = vec![];
    for dir in ["train", "query"] {
        photos.extend(walk(&shared().join("images/faces").join(dir)));
    }
    assert!(photos.len() >= 15, "{photos:?}");
    photos
}

/// Every face of `want` has one in `got` overlapping by at least `min_iou`
/// with landmarks within `px`; the counts are equal. Returns the faces.
fn same_faces(
    p: &std::path::Path,
    got: &[faceall::detect::mtcnn::Face],
    want: &[faceall::detect::mtcnn::Face],
    min_iou: f32,
    px: f32,
) -> usize {
    assert_eq!(
        got.len(),
        want.len(),
        "{}: {got:?} vs {want:?}",
        p.display()
    );
    for fb in want {
        let fa = got
            .iter()
            .max_by(|x, y| iou(x.bbox, fb.bbox).total_cmp(&iou(y.bbox, fb.bbox)))
            .unwrap();
        assert!(
            iou(fa.bbox, fb.bbox) >= min_iou,
            "{}: {fa:?} vs {fb:?}",
            p.display()
        );
        for (la, lb) in fa.landmarks.iter().zip(&fb.landmarks) {
            assert!(
                (la[0] - lb[0]).abs() <= px && (la[1] - lb[1]).abs() <= px,
                "{}: landmarks {:?} vs {:?}",
                p.display(),
                fa.landmarks,
                fb.landmarks
            );
        }
    }
    want.len()
}

/// The fast Caffe executor (packed weights, fused PReLU, NHWC) finds the
/// faces the reference executor finds with the same models, on every photo
/// and for both MTCNN flavours: same count, IoU >= 0.99, landmarks within
/// half a pixel (the nets' outputs differ by float rounding only). On one
/// thread, as the server runs a photo beside another, the boxes are the
/// very same as on every core.
#[test]
fn fast_executor_finds_what_the_reference_executor_finds() {
    for dir in [
        shared().join("models/mtcnn"),
        root().join("converted/mtcnn"),
    ] {
        let fast = Mtcnn::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut slow = Mtcnn::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        slow.reference = true;
        // A serving lane (serve::lanes): one thread, every kernel unsplit.
        let lane = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut seen = 0;
        for p in photos() {
            let img = faceall::preprocess::decode(&p).unwrap();
            let got = fast.detect(&img).unwrap();
            seen += same_faces(&p, &got, &slow.detect(&img).unwrap(), 0.99, 0.5);
            let one = lane.install(|| fast.detect(&img)).unwrap();
            same_faces(&p, &one, &got, 0.99, 0.5);
            assert!(
                one.iter().zip(&got).all(|(a, b)| a.bbox == b.bbox),
                "{}: one thread {one:?}, every core {got:?}",
                p.display()
            );
        }
        assert!(seen >= 17, "{}: {seen}", dir.display());
    }
}

#[test]
fn finds_the_faces_in_the_real_photos() {
    let m = detector();
    let mut seen = 0;
    for person in std::fs::read_dir(shared().join("images/faces/train")).unwrap() {
        for f in std::fs::read_dir(person.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let img = faceall::preprocess::decode(&p).unwrap();
            let faces = m.detect(&img).unwrap();
            eprintln!(
                "{}: {:?}",
                p.display(),
                faces
                    .iter()
                    .map(|f| (f.bbox.map(|v| v.round()), f.score))
                    .collect::<Vec<_>>()
            );
            assert!(!faces.is_empty(), "{}: no face", p.display());
            let best = &faces[0];
            assert!(best.score > 0.9, "{}: {best:?}", p.display());
            let [x1, y1, x2, y2] = best.bbox;
            assert!(
                x2 > x1 + 20.0 && y2 > y1 + 20.0,
                "{}: {best:?}",
                p.display()
            );
            // Landmarks lie inside the box: eyes above the mouth.
            let lm = best.landmarks;
            assert!(
                lm.iter().all(|[x, y]| *x >= x1 - 5.0
                    && *x <= x2 + 5.0
                    && *y >= y1 - 5.0
                    && *y <= y2 + 5.0),
                "{}: {best:?}",
                p.display()
            );
            assert!(
                lm[0][1] < lm[3][1] && lm[1][1] < lm[4][1],
                "{}: eyes below the mouth {best:?}",
                p.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 9);
    let img = faceall::preprocess::decode(&shared().join("images/faces/query/obama_and_biden.jpg"))
        .unwrap();
    let faces = m.detect(&img).unwrap();
    // Biden, Obama, and the girl at the bottom right (partly in frame).
    let mut big: Vec<_> = faces.iter().filter(|f| f.score > 0.95).collect();
    big.sort_by(|a, b| (b.bbox[2] - b.bbox[0]).total_cmp(&(a.bbox[2] - a.bbox[0])));
    assert!(big.len() >= 2, "{faces:?}");
    let centres: Vec<f32> = big[..2]
        .iter()
        .map(|f| (f.bbox[0] + f.bbox[2]) / 2.0)
        .collect();
    assert!(
        centres.iter().any(|c| (750.0..950.0).contains(c))
            && centres.iter().any(|c| (1100.0..1350.0).contains(c)),
        "{faces:?}"
    );
    let blank = image::RgbImage::from_pixel(200, 160, image::Rgb([128, 128, 128]));
    assert!(m.detect(&blank).unwrap().is_empty());
}

/// The MTCNN faceall ships (PyPI mtcnn==1.0.0's weights converted by
/// scripts/convert_mtcnn.py into converted/mtcnn), on the fast executor,
/// finds the same faces as FaceAll's original Caffe models on the reference
/// executor on every photo: boxes overlap by at least 0.9 IoU, landmarks
/// within 2 px.
#[test]
fn converted_mtcnn_finds_the_same_faces_as_faceall() {
    let ours = Mtcnn::load(&root().join("converted/mtcnn")).unwrap_or_else(|e| panic!("{e}"));
    let reference = faceall_reference();
    let mut faces_seen = 0;
    for p in photos() {
        let img = faceall::preprocess::decode(&p).unwrap();
        faces_seen += same_faces(
            &p,
            &ours.detect(&img).unwrap(),
            &reference.detect(&img).unwrap(),
            0.9,
            2.0,
        );
    }
    assert!(faces_seen >= 17, "{faces_seen}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x != "md") {
            out.push(p);
        }
    }
    out.sort();
    out
}
