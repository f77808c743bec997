use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::*;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A server that cuts its first answer after `cut` bytes and honours `Range`
/// afterwards (as the controller's cache does); it records every Range header.
fn cutting_server(data: Vec<u8>, cut: usize) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/files/big-1.0-py3-none-any.whl", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for (served, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
            let range = text.lines().find_map(|line| line.strip_prefix("range: bytes=").map(str::to_owned));
            seen.lock().unwrap().push(range.clone());
            let start: usize =
                range.as_deref().and_then(|r| r.trim_end_matches('-').parse().ok()).unwrap_or(0);
            let (status, extra) = if start > 0 {
                (
                    "206 Partial Content",
                    format!("Content-Range: bytes {start}-{}/{}\r\n", data.len() - 1, data.len()),
                )
            } else {
                ("200 OK", String::new())
            };
            let rest = &data[start..];
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                rest.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(if served == 0 { &rest[..cut.min(rest.len())] } else { rest });
        }
    });
    (url, ranges)
}

#[tokio::test]
async fn a_download_cut_short_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (url, ranges) = cutting_server(data.clone(), 1 << 20);
    let downloader = Downloader::new(dir.path()).unwrap();
    let sha = sha256_hex(&data);
    let fetched = downloader.verified(&url, &sha, "big-1.0-py3-none-any.whl", &mut |_, _| {}).await.unwrap();
    assert!(std::fs::read(&fetched.path).unwrap() == data, "the resumed file is the whole file");
    assert_eq!(*ranges.lock().unwrap(), vec![None, Some(format!("{}-", 1 << 20))], "resumed at the cut");
    assert_eq!(fetched.downloaded_bytes, (2 << 20) as u64, "the second attempt fetched only the rest");
}

#[tokio::test]
async fn a_partial_file_left_by_an_earlier_run_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(1 << 20) + 7).map(|i: u32| (i % 253) as u8).collect();
    // This server never cuts: whatever is asked is what is sent.
    let (url, ranges) = cutting_server(data.clone(), usize::MAX >> 1);
    let sha = sha256_hex(&data);
    let name = "big-1.0-py3-none-any.whl";
    std::fs::create_dir_all(dir.path().join(&sha)).unwrap();
    std::fs::write(dir.path().join(&sha).join(format!(".{name}.partial")), &data[..1000]).unwrap();
    let downloader = Downloader::new(dir.path()).unwrap();
    let fetched = downloader.verified(&url, &sha, name, &mut |_, _| {}).await;
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(error) => panic!("{error}"),
    };
    assert!(std::fs::read(&fetched.path).unwrap() == data);
    assert_eq!(*ranges.lock().unwrap(), vec![Some("1000-".to_owned())]);

    // A kept part that is not the file's start: fetched whole once more, not refused.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join(&sha)).unwrap();
    std::fs::write(other.path().join(&sha).join(format!(".{name}.partial")), vec![0xffu8; 1000]).unwrap();
    let (url, ranges) = cutting_server(data.clone(), usize::MAX >> 1);
    let fetched = Downloader::new(other.path()).unwrap().verified(&url, &sha, name, &mut |_, _| {}).await;
    assert!(fetched.is_ok(), "{:?}", fetched.err().map(|error| error.to_string()));
    assert_eq!(*ranges.lock().unwrap(), vec![Some("1000-".to_owned()), None]);
}
