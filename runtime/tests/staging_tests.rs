//! Data staging between a driver and an executor's stager over QUIC: a
//! published file arrives byte-exact into the content-keyed cache and is
//! served from it afterwards; a file that changed on the driver's host
//! since it was published is fetched again, then refused naming it; an
//! unpublished hash is refused; `local_path` reads a present file in
//! place and stages a missing one.

use std::sync::Arc;

use kiln_runtime::staging::{hash_file, local_path, FileRef, Stager};
use kiln_runtime::{Driver, DriverConfig, Error, Registry};

async fn driver() -> Driver {
    Driver::start(DriverConfig::default(), Arc::new(Registry::new()))
        .await
        .unwrap()
}

fn stager(d: &Driver, cache: &std::path::Path) -> Arc<Stager> {
    Arc::new(Stager::new(
        d.addr(),
        d.token().clone(),
        cache.to_path_buf(),
        tokio::runtime::Handle::current(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_file_is_staged_once_then_served_from_the_cache() {
    let d = driver().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.flac");
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&data, &bytes).unwrap();
    let file = d.publish(&data).unwrap();
    assert_eq!(file.len, bytes.len() as u64);
    let cache = tempfile::tempdir().unwrap();
    let s = stager(&d, cache.path());
    let (s2, f2) = (s.clone(), file.clone());
    let path = tokio::task::spawn_blocking(move || s2.fetch(&f2))
        .await
        .unwrap()
        .unwrap();
    // Keyed by content, under the file's own name (readers look at it).
    assert!(path.starts_with(cache.path().join("sha256").join(file.hex())));
    assert_eq!(path.file_name().unwrap(), "data.flac");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(s.fetched_bytes(), bytes.len() as u64);
    assert_eq!(d.staged_bytes_served(), bytes.len() as u64);
    // Again: from the cache, nothing crosses the network.
    let (s2, f2) = (s.clone(), file.clone());
    let again = tokio::task::spawn_blocking(move || s2.fetch(&f2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, path);
    assert_eq!(s.fetched_bytes(), bytes.len() as u64);
    // `local_path` inside the stager's scope: the file is here, so it is
    // read in place; with `stage` it comes from the cache; a file missing
    // here is staged.
    let (s2, f2) = (s.clone(), file.clone());
    let (in_place, staged) = tokio::task::spawn_blocking(move || {
        s2.scope(|| (local_path(&f2, false), local_path(&f2, true)))
    })
    .await
    .unwrap();
    assert_eq!(in_place.unwrap(), data);
    assert_eq!(staged.unwrap(), path);
    let elsewhere = FileRef {
        path: dir.path().join("not-here.flac"),
        ..file.clone()
    };
    let s2 = s.clone();
    let fetched = tokio::task::spawn_blocking(move || s2.scope(|| local_path(&elsewhere, false)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched.parent(), path.parent());
    assert_eq!(fetched.file_name().unwrap(), "not-here.flac");
    assert_eq!(std::fs::read(&fetched).unwrap(), bytes);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_since_publishing_is_refetched_then_refused_naming_it() {
    let d = driver().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images.jpg");
    std::fs::write(&data, b"the bytes the job was planned with").unwrap();
    let file = d.publish(&data).unwrap();
    // Changed on the driver's host after the job published it.
    std::fs::write(&data, b"other bytes of the very same length!!").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let s = stager(&d, cache.path());
    let (s2, f2) = (s.clone(), file.clone());
    let err = tokio::task::spawn_blocking(move || s2.fetch(&f2))
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        Error::Staging { path, reason } => {
            assert_eq!(path, &data);
            assert!(reason.contains("twice"), "{reason}");
            assert!(reason.contains("SHA-256"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("images.jpg"), "{err}");
    // Nothing half-written is left in the cache.
    let leftovers: Vec<_> = walk(cache.path());
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A hash the driver never published is refused.
    let (len, sha256) = hash_file(&data).unwrap();
    let unpublished = FileRef {
        path: data.clone(),
        len,
        sha256,
    };
    let s2 = s.clone();
    let err = tokio::task::spawn_blocking(move || s2.fetch(&unpublished))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("no published file"), "{err}");
    d.shutdown().await;
}

/// Regular files under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
