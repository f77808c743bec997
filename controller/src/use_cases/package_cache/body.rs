//! The bytes of a cached file as an HTTP body: a byte range of it (RFC 9110 §14),
//! read from disk in small chunks, with at most [`WINDOW`] chunks of one answer in
//! memory until the connection has written them out. A reader that stops reading
//! therefore holds a few tens of KiB of the controller's memory, not a file's worth
//! of buffers, and one that reads nothing for [`STALLED_READER`] is cut off.
//!
//! A file still being downloaded is followed as it grows, never past
//! [`HOLDBACK`] before its end until it verified: an agent can never receive a
//! complete file whose bytes do not match.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::use_cases::package_cache::{HOLDBACK, Opened, State};

/// Bytes read from disk at a time.
const CHUNK: usize = 32 << 10;
/// Chunks of one answer in memory at once (read, not yet written to the connection).
const WINDOW: usize = 2;
/// How long an answer waits for its reader to take the chunks it holds.
const STALLED_READER: Duration = Duration::from_secs(120);

/// Which bytes of a file of known size a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// All of it (no `Range`, one this server ignores, or several ranges).
    Whole,
    /// `first..=last`.
    Part { first: u64, last: u64 },
    /// A range that starts past the end: 416.
    Unsatisfiable,
}

impl ByteRange {
    /// The range `header` (a `Range` value) asks of a file of `size` bytes. Several
    /// ranges are answered with the whole file (a 200, which RFC 9110 allows): the
    /// agents ask for one, and a multipart answer is not worth its code.
    pub fn parse(header: Option<&str>, size: u64) -> Self {
        let Some(header) = header else { return Self::Whole };
        let Some(spec) = header.trim().strip_prefix("bytes=") else { return Self::Whole };
        if spec.contains(',') {
            return Self::Whole;
        }
        let Some((first, last)) = spec.trim().split_once('-') else { return Self::Whole };
        let number = |text: &str| {
            let text = text.trim();
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u64>().ok())?
        };
        match (number(first), number(last)) {
            // bytes=-N: the last N bytes.
            (None, Some(suffix)) if first.trim().is_empty() => {
                if suffix == 0 || size == 0 {
                    Self::Unsatisfiable
                } else {
                    Self::Part { first: size.saturating_sub(suffix), last: size - 1 }
                }
            }
            (Some(first), None) if last.trim().is_empty() => {
                if first >= size {
                    Self::Unsatisfiable
                } else {
                    Self::Part { first, last: size - 1 }
                }
            }
            (Some(first), Some(last)) if first <= last => {
                if first >= size {
                    Self::Unsatisfiable
                } else {
                    Self::Part { first, last: last.min(size - 1) }
                }
            }
            // Not a valid byte range: ignored, as RFC 9110 says.
            _ => Self::Whole,
        }
    }
}

/// One chunk, holding its place in the answer's window until the connection drops it.
struct Chunk {
    bytes: Vec<u8>,
    _place: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The bytes `first..end` (`end` `None`: to the end) of an [`Opened`] file as a stream.
pub fn body_stream(
    opened: Opened,
    first: u64,
    end: Option<u64>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    struct Follow {
        file: Option<tokio::fs::File>,
        sent: u64,
        end: u64,
        partial: PathBuf,
        finished: PathBuf,
        state: Option<watch::Receiver<State>>,
        window: Arc<Semaphore>,
        done: bool,
    }
    let (partial, finished, state) = match opened {
        Opened::Ready { path, .. } => (path.clone(), path, None),
        Opened::Downloading { partial, finished, state } => (partial, finished, Some(state)),
    };
    let follow = Follow {
        file: None,
        sent: first,
        end: end.unwrap_or(u64::MAX),
        partial,
        finished,
        state,
        window: Arc::new(Semaphore::new(WINDOW)),
        done: false,
    };
    futures_util::stream::unfold(follow, |mut follow| async move {
        if follow.done || follow.sent >= follow.end {
            return None;
        }
        let failed =
            |follow: Follow, error: std::io::Error| Some((Err(error), Follow { done: true, ..follow }));
        loop {
            // How far may be sent now, and whether that is the end.
            let snapshot = follow.state.as_mut().map(|state| state.borrow_and_update().clone());
            let (allowed, complete) = match snapshot {
                None => (u64::MAX, true),
                Some(State::Verified { size }) => (size, true),
                Some(State::Failed { message, .. }) => return failed(follow, std::io::Error::other(message)),
                Some(State::Downloading { written, total }) => {
                    let cap = match total {
                        Some(total) => written.min(total.saturating_sub(HOLDBACK)),
                        None => written.saturating_sub(HOLDBACK),
                    };
                    (cap, false)
                }
            };
            let allowed = allowed.min(follow.end);
            if follow.file.is_none() && (allowed > follow.sent || complete) {
                let opened = match tokio::fs::File::open(&follow.partial).await {
                    Ok(file) => Ok(file),
                    Err(_) => tokio::fs::File::open(&follow.finished).await,
                };
                match opened {
                    Ok(mut file) => {
                        if follow.sent > 0
                            && let Err(error) = file.seek(SeekFrom::Start(follow.sent)).await
                        {
                            return failed(follow, error);
                        }
                        follow.file = Some(file);
                    }
                    Err(error) if complete => return failed(follow, error),
                    Err(_) => {}
                }
            }
            if allowed > follow.sent
                && let Some(file) = follow.file.as_mut()
            {
                // Wait for the reader to take what it was given before reading more.
                let place =
                    match tokio::time::timeout(STALLED_READER, follow.window.clone().acquire_owned()).await {
                        Ok(Ok(place)) => place,
                        _ => {
                            let error = std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("the reader took nothing for {} s", STALLED_READER.as_secs()),
                            );
                            return failed(follow, error);
                        }
                    };
                let want = usize::try_from((allowed - follow.sent).min(CHUNK as u64)).unwrap_or(CHUNK);
                let mut buffer = vec![0u8; want];
                match file.read(&mut buffer).await {
                    Ok(0) if complete => return None,
                    Ok(0) => {}
                    Ok(read) => {
                        buffer.truncate(read);
                        follow.sent += read as u64;
                        let chunk = Bytes::from_owner(Chunk { bytes: buffer, _place: place });
                        return Some((Ok(chunk), follow));
                    }
                    Err(error) => return failed(follow, error),
                }
            } else if complete && allowed <= follow.sent {
                return None;
            }
            if !complete
                && let Some(state) = &mut follow.state
                && state.changed().await.is_err()
            {
                // The download task ended without a last word: treat as failed.
                return failed(follow, std::io::Error::other("the upstream download stopped"));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let part = |first, last| ByteRange::Part { first, last };
        let parse = |header: &str| ByteRange::parse(Some(header), 1000);
        assert_eq!(ByteRange::parse(None, 1000), ByteRange::Whole);
        assert_eq!(parse("bytes=0-0"), part(0, 0));
        assert_eq!(parse("bytes=500-"), part(500, 999));
        assert_eq!(parse("bytes=900-5000"), part(900, 999));
        assert_eq!(parse("bytes=-100"), part(900, 999));
        assert_eq!(parse("bytes=-5000"), part(0, 999));
        assert_eq!(parse("bytes=1000-"), ByteRange::Unsatisfiable);
        assert_eq!(parse("bytes=1000-1001"), ByteRange::Unsatisfiable);
        assert_eq!(parse("bytes=-0"), ByteRange::Unsatisfiable);
        assert_eq!(ByteRange::parse(Some("bytes=0-0"), 0), ByteRange::Unsatisfiable);
        for ignored in
            ["bytes=0-1,5-6", "bytes=5-1", "items=0-1", "bytes=x-1", "bytes=", "bytes=-", "bytes=+1-2"]
        {
            assert_eq!(parse(ignored), ByteRange::Whole, "{ignored}");
        }
    }

    #[tokio::test]
    async fn a_stream_gives_its_range_and_holds_at_most_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let data: Vec<u8> = (0..(CHUNK * 8 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let ready = || Opened::Ready { path: path.clone(), size: data.len() as u64 };

        // What a connection does: copies each chunk out and lets it go.
        let read =
            |first, end| body_stream(ready(), first, end).map(|chunk| chunk.unwrap().to_vec()).concat();
        assert_eq!(read(0, None).await, data);
        assert_eq!(read(5, Some(40_000)).await, &data[5..40_000]);
        assert_eq!(read(0, Some(1)).await, &data[..1]);

        // A reader that keeps the chunks it got stops the stream at the window.
        let mut stream = Box::pin(body_stream(ready(), 0, None));
        let mut held = Vec::new();
        for _ in 0..WINDOW {
            held.push(stream.next().await.unwrap().unwrap());
        }
        let more = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        assert!(more.is_err(), "no third chunk while two are held");
        held.clear();
        assert!(stream.next().await.unwrap().is_ok(), "released, the stream goes on");
    }
}
