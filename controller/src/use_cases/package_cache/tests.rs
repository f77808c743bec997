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

/// The tests' upstreams are on 127.0.0.1, named as a farm names its mirror.
fn local() -> SourcePolicy {
    SourcePolicy { allow_hosts: vec!["127.0.0.1".into()], ..SourcePolicy::default() }
}

async fn store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&dir.join("controller.db")).await.unwrap())
}

/// Stores a revision of environment `name` whose lock holds `files`.
async fn revision_with(store: &dyn Store, name: &str, commit: char, files: &[PackageFile]) {
    let mut spec = Spec::parse(
        "spec.toml",
        &crate::use_cases::test_fleet::spec(name, &commit.to_string().repeat(40)),
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
    let cache = Arc::new(PackageCache::new(dir.path().join("cache"), None, store, local()).unwrap());
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
    let cache = Arc::new(PackageCache::new(cache_dir, Some((2 << 20) + (1 << 19)), store, local()).unwrap());
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
    let cache = Arc::new(
        PackageCache::new(dir.path().join("cache"), None, store(dir.path()).await, local()).unwrap(),
    );
    let unknown = "ab".repeat(32);
    assert!(matches!(cache.open(&unknown).await, Err(CacheError::Unknown(_))));
    assert!(matches!(cache.open("../../etc/passwd").await, Err(CacheError::BadDigest(_))));
}

/// An upstream on `host` that answers every request with `answer`, counting them.
fn answering(host: &str, answer: String) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((host, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (address, requests)
}

/// How the cache answers for a file at `url` once its download ended.
async fn failure_for(dir: &Path, url: &str) -> String {
    let store = store(dir).await;
    let file = PackageFile {
        sha256: sha256_hex(url.as_bytes()),
        url: url.to_owned(),
        file_name: "gone-1.0-py3-none-any.whl".into(),
        size: None,
    };
    revision_with(store.as_ref(), "render", 'a', std::slice::from_ref(&file)).await;
    let cache = Arc::new(PackageCache::new(dir.join("cache"), None, store, local()).unwrap());
    let Opened::Downloading { state, .. } = cache.open(&file.sha256).await.unwrap() else {
        panic!("not cached")
    };
    let State::Failed { message, integrity } =
        tokio::time::timeout(Duration::from_secs(30), finished(state)).await.unwrap()
    else {
        panic!("{url} cannot verify")
    };
    assert!(!integrity);
    // Asked again at once: the reason again, without another upstream request.
    let Err(CacheError::Refused { message: again, .. }) = cache.open(&file.sha256).await else {
        panic!("refused")
    };
    assert_eq!(again, message);
    assert!(!cache.file_path(&file.sha256).exists());
    message.replace(url, "URL")
}

#[tokio::test]
async fn an_upstream_failure_says_unreachable_whatever_answered() {
    let not_found =
        "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nno secret".to_owned();
    let (answered, _) = answering("127.0.0.1", not_found);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let from_404 =
        failure_for(dir_a.path(), &format!("http://{answered}/files/gone-1.0-py3-none-any.whl")).await;
    let from_closed =
        failure_for(dir_b.path(), &format!("http://{closed}/files/gone-1.0-py3-none-any.whl")).await;
    assert!(from_404.contains("URL is unreachable"), "{from_404}");
    assert_eq!(from_404, from_closed, "an answer and a closed port read alike");
    for detail in ["404", "secret", "refused", "onnect"] {
        assert!(!from_404.contains(detail), "{detail}: {from_404}");
    }
}

#[tokio::test]
async fn a_redirect_to_a_host_the_policy_refuses_is_not_followed() {
    // A stand-in for a cloud metadata service, on another loopback address.
    let metadata_answer =
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret".to_owned();
    let (metadata, asked) = answering("127.0.0.2", metadata_answer);
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: http://{metadata}/latest/meta-data/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (upstream, redirected) = answering("127.0.0.1", redirect);
    let dir = tempfile::tempdir().unwrap();
    let message =
        failure_for(dir.path(), &format!("http://{upstream}/files/gone-1.0-py3-none-any.whl")).await;
    assert!(redirected.load(Ordering::SeqCst) > 0, "the allowed upstream was asked");
    assert_eq!(asked.load(Ordering::SeqCst), 0, "the metadata service never was");
    assert!(message.contains("unreachable") && !message.contains("127.0.0.2"), "{message}");

    // Named directly, it is refused before anything is asked.
    let dir = tempfile::tempdir().unwrap();
    let direct = failure_for(dir.path(), &format!("http://{metadata}/files/gone-1.0-py3-none-any.whl")).await;
    assert!(direct.contains("--source-allow-host 127.0.0.2"), "{direct}");
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}
