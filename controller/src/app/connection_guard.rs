//! What a connection must do to be kept, before anyone has authenticated it.
//!
//! A client that completes the TLS handshake and then sends nothing would otherwise be
//! held forever: HTTP/2 keepalive starts only after the client's preface, and no
//! request means no handler ever looks at it. So every accepted connection must send
//! its first bytes within [`Limits::first_bytes`] of the handshake and its first
//! request — an HTTP/2 `HEADERS` frame, or the end of an HTTP/1.1 request head —
//! within [`Limits::first_request`]; otherwise its reads fail and the server drops it.
//! After its first request a connection is the protocol's business (keepalive, the
//! handlers' own deadlines, hyper's header-read timeout). And one source address holds
//! at most [`Limits::per_address`] connections (handshakes included): past that, new
//! ones are closed at accept ([`accept_capped`]). Every listener of the controller —
//! the TLS port, the web page, `/metrics` ([`incoming`], plain TCP) — is held to the
//! same limits.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header: length (3 bytes), type, flags, stream id (4 bytes).
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub first_bytes: Duration,
    pub first_request: Duration,
    /// `0`: no cap.
    pub per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            first_bytes: Duration::from_secs(10),
            first_request: Duration::from_secs(30),
            per_address: 1024,
        }
    }
}

/// Live connections per source address.
#[derive(Clone, Default)]
pub struct AddressCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in its address's count; given back when dropped.
pub struct Slot {
    counts: AddressCounts,
    address: IpAddr,
}

impl AddressCounts {
    /// A slot for a connection from `address`, unless it holds `cap` already.
    pub fn take(&self, address: IpAddr, cap: usize) -> Option<Slot> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(address).or_default();
        if cap != 0 && *count >= cap {
            return None;
        }
        *count += 1;
        Some(Slot { counts: self.clone(), address })
    }

    #[cfg(test)]
    fn count(&self, address: IpAddr) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&address).copied().unwrap_or_default()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The next connection `listener` accepts from an address that holds fewer than
/// `cap` (`0`: no cap), with its slot; those past the cap are closed at once.
/// `warned`: when the last "closing its new ones" line was logged (one a minute).
pub async fn accept_capped(
    listener: &TcpListener,
    counts: &AddressCounts,
    cap: usize,
    warned: &mut Option<Instant>,
) -> (TcpStream, SocketAddr, Slot) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = counts.take(peer.ip(), cap) else {
            // One line a minute, not one per refused connection.
            if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                *warned = Some(Instant::now());
                let listen = listener.local_addr().ok();
                tracing::warn!(address = %peer.ip(), cap, ?listen, "an address holds as many connections as it may; closing its new ones (--max-connections-per-address)");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        return (tcp, peer, slot);
    }
}

/// Accepts plain TCP connections on `listener` (no TLS: `/metrics`), each held to
/// `limits` from its accept. Ends when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
) -> ReceiverStream<Result<Guarded<TcpStream>, io::Error>> {
    let (ready, stream) = mpsc::channel(64);
    tokio::spawn(async move {
        let counts = AddressCounts::default();
        let mut warned = None;
        loop {
            let (tcp, _, slot) = tokio::select! {
                accepted = accept_capped(&listener, &counts, limits.per_address, &mut warned) => accepted,
                () = ready.closed() => return,
            };
            if ready.send(Ok(Guarded::new(tcp, Instant::now(), limits, slot))).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(stream)
}

/// Where a connection is in its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing received yet.
    Silent,
    /// `matched` bytes of the HTTP/2 preface received.
    Preface { matched: usize },
    /// `have` bytes of a frame header received.
    FrameHeader { have: usize },
    /// `left` bytes of a frame's payload still to skip.
    Payload { left: usize },
    /// An HTTP/1 request head: the last bytes seen, to find `\r\n\r\n`.
    Http1 { tail: u32 },
    /// The first request arrived: nothing more is watched.
    Served,
}

/// Follows the bytes a client sends until its first request.
#[derive(Debug)]
struct FirstRequest {
    stage: Stage,
    header: [u8; FRAME_HEADER],
}

impl FirstRequest {
    fn new() -> Self {
        Self { stage: Stage::Silent, header: [0; FRAME_HEADER] }
    }

    fn served(&self) -> bool {
        self.stage == Stage::Served
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.stage {
                Stage::Served => return,
                Stage::Silent => {
                    self.stage = if bytes[0] == PREFACE[0] {
                        Stage::Preface { matched: 0 }
                    } else {
                        Stage::Http1 { tail: 0 }
                    };
                }
                Stage::Preface { matched } => {
                    let take = (PREFACE.len() - matched).min(bytes.len());
                    if bytes[..take] != PREFACE[matched..matched + take] {
                        // "P…" that is not the preface: an HTTP/1 method (PUT, POST).
                        self.stage = Stage::Http1 { tail: 0 };
                        continue;
                    }
                    bytes = &bytes[take..];
                    let matched = matched + take;
                    self.stage = if matched == PREFACE.len() {
                        Stage::FrameHeader { have: 0 }
                    } else {
                        Stage::Preface { matched }
                    };
                }
                Stage::FrameHeader { have } => {
                    let take = (FRAME_HEADER - have).min(bytes.len());
                    self.header[have..have + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    let have = have + take;
                    if have < FRAME_HEADER {
                        self.stage = Stage::FrameHeader { have };
                    } else if self.header[3] == HEADERS {
                        self.stage = Stage::Served;
                    } else {
                        let length = usize::from(self.header[0]) << 16
                            | usize::from(self.header[1]) << 8
                            | usize::from(self.header[2]);
                        self.stage = if length == 0 {
                            Stage::FrameHeader { have: 0 }
                        } else {
                            Stage::Payload { left: length }
                        };
                    }
                }
                Stage::Payload { left } => {
                    let take = left.min(bytes.len());
                    bytes = &bytes[take..];
                    self.stage = if take == left {
                        Stage::FrameHeader { have: 0 }
                    } else {
                        Stage::Payload { left: left - take }
                    };
                }
                Stage::Http1 { mut tail } => {
                    for (index, byte) in bytes.iter().enumerate() {
                        tail = tail << 8 | u32::from(*byte);
                        if tail == u32::from_be_bytes(*b"\r\n\r\n") {
                            self.stage = Stage::Served;
                            bytes = &bytes[index + 1..];
                            break;
                        }
                    }
                    if self.stage != Stage::Served {
                        self.stage = Stage::Http1 { tail };
                        return;
                    }
                }
            }
        }
    }
}

/// A connection held to [`Limits`]: reads fail once a deadline passes before the
/// first request.
pub struct Guarded<S> {
    inner: S,
    watch: FirstRequest,
    deadline: Pin<Box<Sleep>>,
    accepted: Instant,
    limits: Limits,
    _slot: Slot,
}

impl<S> Guarded<S> {
    /// `inner` was accepted (its handshake done) at `accepted`.
    pub fn new(inner: S, accepted: Instant, limits: Limits, slot: Slot) -> Self {
        Self {
            inner,
            watch: FirstRequest::new(),
            deadline: Box::pin(tokio::time::sleep_until(accepted + limits.first_bytes)),
            accepted,
            limits,
            _slot: slot,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.watch.served() && this.deadline.as_mut().poll(cx).is_ready() {
            let what = if this.watch.stage == Stage::Silent { "no bytes" } else { "no request" };
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} within {:?} of the handshake", this.accepted.elapsed()),
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if !this.watch.served() {
            let silent = this.watch.stage == Stage::Silent;
            this.watch.observe(&buf.filled()[before..]);
            if silent && this.watch.stage != Stage::Silent {
                this.deadline.as_mut().reset(this.accepted + this.limits.first_request);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let length = payload.len();
        let mut bytes = vec![(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, 0, 0, 0, 0, 1];
        bytes.extend_from_slice(payload);
        bytes
    }

    fn fed(chunks: &[&[u8]]) -> FirstRequest {
        let mut watch = FirstRequest::new();
        for chunk in chunks {
            watch.observe(chunk);
        }
        watch
    }

    #[test]
    fn an_http2_request_is_its_headers_frame_after_the_preface_and_settings() {
        let settings = frame(0x4, &[0, 3, 0, 0, 0, 100]);
        let ack = frame(0x4, &[]);
        let headers = frame(HEADERS, b"\x82\x86");
        assert_eq!(fed(&[]).stage, Stage::Silent);
        assert!(!fed(&[PREFACE]).served());
        assert!(!fed(&[PREFACE, &settings, &ack]).served(), "settings are not a request");
        let whole: Vec<u8> = [PREFACE, &settings, &ack, &headers].concat();
        assert!(fed(&[&whole]).served());
        // Byte by byte, the same.
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert!(fed(&bytes).served());
        let before_headers: Vec<&[u8]> = whole[..whole.len() - headers.len()].chunks(5).collect();
        assert!(!fed(&before_headers).served());
    }

    #[test]
    fn an_http1_request_is_its_head() {
        assert!(!fed(&[b"GET /cache/v1/files/x HTTP/1.1\r\nHost: c\r\n"]).served());
        assert!(fed(&[b"GET / HTTP/1.1\r\nHost: c\r", b"\n\r\n"]).served());
        assert!(fed(&[b"PUT / HTTP/1.1\r\n\r\n"]).served(), "P… that is not the preface");
    }

    #[test]
    fn an_address_holds_at_most_its_cap_and_gets_slots_back() {
        let counts = AddressCounts::default();
        let address: IpAddr = "10.0.0.9".parse().unwrap();
        let held: Vec<Slot> = (0..3).map(|_| counts.take(address, 3).unwrap()).collect();
        assert!(counts.take(address, 3).is_none());
        assert!(counts.take("10.0.0.8".parse().unwrap(), 3).is_some(), "another address");
        drop(held);
        assert_eq!(counts.count(address), 0);
        assert!(counts.take(address, 0).is_some(), "0: no cap");
    }

    #[tokio::test]
    async fn a_silent_connection_fails_its_reads_at_the_deadline_and_a_served_one_never() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let counts = AddressCounts::default();
        let limits = Limits {
            first_bytes: Duration::from_millis(100),
            first_request: Duration::from_millis(300),
            per_address: 0,
        };
        let slot = || counts.take("127.0.0.1".parse().unwrap(), 0).unwrap();
        let (server, _client) = tokio::io::duplex(1024);
        let mut silent = Guarded::new(server, Instant::now(), limits, slot());
        let mut buffer = [0u8; 64];
        let error = silent.read(&mut buffer).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);

        let (server, mut client) = tokio::io::duplex(1024);
        let mut served = Guarded::new(server, Instant::now(), limits, slot());
        client.write_all(&[PREFACE, &frame(HEADERS, b"x")].concat()).await.unwrap();
        let mut read = 0;
        while read < PREFACE.len() + FRAME_HEADER + 1 {
            read += served.read(&mut buffer).await.unwrap();
        }
        let quiet = tokio::time::timeout(Duration::from_millis(500), served.read(&mut buffer)).await;
        assert!(quiet.is_err(), "a served connection may stay quiet");
    }
}
