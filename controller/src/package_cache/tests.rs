use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;

use comfyfleet_config::lock::{Lock, LockedPackage};
use comfyfleet_config::spec::canonical::to_canonical_json;
use comfyfleet_config::{Spec, SpecFormat};

use super::*;
use crate::store::{NewRevision, SqliteStore, StoredLock};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An upstream that cuts its first answer after `cut` bytes and honours `Range`
/// afterwards; it records every request's Range header.
fn flaky_upstream(data: Vec<u8>, cut: usize) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/files/big-1.0-py3-none-any.whl", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let served = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
            let range = text.lines().find_map(|line| line.strip_prefix("range: bytes=").map(str::to_owned));
            seen.lock().unwrap().push(range.clone());
            let first = served.fetch_add(1, Ordering::SeqCst) == 0;
            if first {
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&data[..cut]);
                continue; // dropped: the download is cut short
            }
            let start: usize =
                range.as_deref().and_then(|r| r.trim_end_matches('-').parse().ok()).unwrap_or(0);
            let rest = &data[start..];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                rest.len(),
                data.len() - 1,
                data.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(rest);
        }
    });
    (url, ranges)
}

async fn store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&dir.join("controller.db")).await.unwrap())
}

/// Stores a revision of environment `name` whose lock holds `files`.
async fn revision_with(store: &dyn Store, name: &str, commit: char, files: &[PackageFile]) {
    let mut spec = Spec::parse(
        "spec.toml",
        &crate::test_fleet::spec(name, &commit.to_string().repeat(40)),
        SpecFormat::Toml,
    )
    .unwrap();
    let lock = Lock {
        class: "cp312-cu128-linux_x86_64".into(),
        packages: files
            .iter()
            .map(|file| LockedPackage {
                name: file.file_name.split('-').next().unwrap().to_owned(),
                version: "1.0".into(),
                url: file.url.clone(),
                sha256: file.sha256.clone(),
                size: file.size,
            })
            .collect(),
        unresolved: Default::default(),
        notes: Vec::new(),
    };
    spec.lock.digests.insert(lock.class.clone(), lock.digest());
    let revision = NewRevision {
        environment: name.into(),
        id: spec.digest(),
        spec_json: to_canonical_json(&spec),
        created_at: jiff::Timestamp::now(),
        created_by: "test".into(),
        locks: vec![StoredLock {
            digest: lock.digest(),
            class: lock.class.clone(),
            lock_json: lock.to_canonical_json(),
        }],
        files: files.to_vec(),
    };
    store.put_environment_revision(&revision).await.unwrap();
}

async fn finished(mut state: watch::Receiver<State>) -> State {
    loop {
        let current = state.borrow_and_update().clone();
        if !matches!(current, State::Downloading { .. }) {
            return current;
        }
        state.changed().await.unwrap();
    }
}

#[tokio::test]
async fn an_interrupted_upstream_download_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (url, ranges) = flaky_upstream(data.clone(), 1 << 20);
    let store = store(dir.path()).await;
    let file = PackageFile {
        sha256: sha256_hex(&data),
        url,
        file_name: "big-1.0-py3-none-any.whl".into(),
        size: Some(data.len() as u64),
    };
    revision_with(store.as_ref(), "render", 'a', std::slice::from_ref(&file)).await;
    let cache = Arc::new(PackageCache::new(dir.path().join("cache"), None, store).unwrap());
    let Opened::Downloading { state, .. } = cache.open(&file.sha256).await.unwrap() else {
        panic!("not cached yet")
    };
    assert_eq!(finished(state).await, State::Verified { size: data.len() as u64 });
    let kept = std::fs::read(cache.file_path(&file.sha256)).unwrap();
    assert!(kept == data, "the resumed file is the whole file");
    assert_eq!(*ranges.lock().unwrap(), vec![None, Some(format!("{}-", 1 << 20))], "resumed at the cut");
    assert_eq!(cache.status().await.bytes_from_upstream, data.len() as u64, "no byte fetched twice");
    // Served from disk from now on.
    assert!(matches!(cache.open(&file.sha256).await.unwrap(), Opened::Ready { .. }));
}

#[tokio::test]
async fn over_its_limit_the_cache_evicts_what_no_kept_revision_needs_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let cache_dir = dir.path().join("cache");
    let mib = vec![7u8; 1 << 20];
    let put = |name: &str, age_secs: u64| {
        let bytes = [mib.as_slice(), name.as_bytes()].concat();
        let sha = sha256_hex(&bytes);
        let path = cache_dir.join("files").join(&sha);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let used = std::time::SystemTime::now() - Duration::from_secs(age_secs);
        std::fs::File::options().append(true).open(&path).unwrap().set_modified(used).unwrap();
        PackageFile {
            sha256: sha,
            url: format!("https://x.example/{name}-1.0-py3-none-any.whl"),
            file_name: format!("{name}-1.0-py3-none-any.whl"),
            size: Some(bytes.len() as u64),
        }
    };
    let needed = put("needed", 3000);
    let oldest = put("oldest", 2000);
    let newer = put("newer", 1000);
    // The newest revision of `render` needs the first file only.
    revision_with(store.as_ref(), "render", 'a', std::slice::from_ref(&needed)).await;
    let cache = Arc::new(PackageCache::new(cache_dir, Some((2 << 20) + (1 << 19)), store).unwrap());
    let status = cache.status().await;
    assert_eq!((status.files, status.needed_files), (3, 1));
    cache.evict().await;
    assert!(cache.file_path(&needed.sha256).exists(), "a kept revision's file is never evicted");
    assert!(!cache.file_path(&oldest.sha256).exists(), "the least recently used goes first");
    assert!(cache.file_path(&newer.sha256).exists(), "and no more than needed to fit");
    // `prune` removes every file no kept revision needs; `prune --all` the rest.
    assert_eq!(cache.prune(false).await.0, 1);
    assert_eq!(cache.prune(true).await.0, 1);
    assert_eq!(cache.status().await.files, 0);
}

#[tokio::test]
async fn a_file_no_revision_names_is_not_fetched_for_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(PackageCache::new(dir.path().join("cache"), None, store(dir.path()).await).unwrap());
    let unknown = "ab".repeat(32);
    assert!(matches!(cache.open(&unknown).await, Err(CacheError::Unknown(_))));
    assert!(matches!(cache.open("../../etc/passwd").await, Err(CacheError::BadDigest(_))));
}

#[tokio::test]
async fn an_upstream_error_is_a_failure_that_names_the_url_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/files/gone-1.0-py3-none-any.whl", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ =
                stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let store = store(dir.path()).await;
    let file = PackageFile {
        sha256: "cd".repeat(32),
        url: url.clone(),
        file_name: "gone-1.0-py3-none-any.whl".into(),
        size: None,
    };
    revision_with(store.as_ref(), "render", 'a', std::slice::from_ref(&file)).await;
    let cache = Arc::new(PackageCache::new(dir.path().join("cache"), None, store).unwrap());
    let Opened::Downloading { state, .. } = cache.open(&file.sha256).await.unwrap() else {
        panic!("not cached")
    };
    let State::Failed { message, integrity } =
        tokio::time::timeout(Duration::from_secs(10), finished(state)).await.unwrap()
    else {
        panic!("a 404 cannot verify")
    };
    assert!(!integrity);
    assert!(message.contains(&url) && message.contains("404"), "{message}");
    // Asked again at once: the reason again, without another upstream request.
    let Err(CacheError::Refused { message: again, .. }) = cache.open(&file.sha256).await else {
        panic!("refused")
    };
    assert_eq!(again, message);
    assert!(!cache.file_path(&file.sha256).exists());
}
