//! The `--events` file: one JSON object a line, appended as simulated agents enroll,
//! connect, receive assignments, prepare and activate. One writer thread owns the
//! file, so no agent ever waits on the disk; it flushes at least every 100 ms while
//! there is something to write, and when closed.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use comfyfleet_config::AssignmentRecord;
use serde::Serialize;

const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The agent has its identity (`reused`: from an earlier run, no enrollment).
    Enrolled,
    /// A session is up (the controller's Welcome arrived).
    Connected,
    /// A session ended.
    Disconnected,
    /// The controller refused the machine (revoked): its link stopped.
    Refused,
    /// A new generation arrived.
    Assigned,
    PrepareStarted,
    Prepared,
    PrepareFailed,
    ActivationStarted,
    Activated,
    ActivationFailed,
    /// The agent was chosen to fail (`fails`: `prepare` or `activate`).
    Failer,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub agent: usize,
    pub machine_id: String,
    pub event: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_number: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fails: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused: Option<bool>,
}

impl Event {
    pub fn new(agent: usize, machine_id: &str, event: EventKind) -> Self {
        Self {
            at_ms: jiff::Timestamp::now().as_millisecond(),
            agent,
            machine_id: machine_id.to_owned(),
            event,
            generation: None,
            revision_number: None,
            revision_id: None,
            activate: None,
            error: None,
            fails: None,
            reused: None,
        }
    }

    /// With the assignment's generation, revision and `activate`.
    pub fn about(mut self, record: &AssignmentRecord) -> Self {
        self.generation = Some(record.generation);
        self.revision_number = Some(record.revision_number);
        self.revision_id = Some(record.revision_id.clone());
        self.activate = Some(record.activate);
        self
    }

    pub fn error(mut self, error: &str) -> Self {
        self.error = Some(error.to_owned());
        self
    }
}

enum Message {
    Line(String),
    Close,
}

/// Where agents send their events; cheap to clone. Without `--events` it drops them.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    sender: Option<mpsc::Sender<Message>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Line(_) => "Line",
            Message::Close => "Close",
        })
    }
}

impl EventLog {
    /// Appends to `path` (created if missing) from a writer thread.
    pub fn open(path: &Path) -> std::io::Result<(EventLog, EventWriter)> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (sender, receiver) = mpsc::channel();
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("fleetsim-events".into())
            .spawn(move || write_events(file, &path, &receiver))?;
        let log = EventLog { sender: Some(sender.clone()) };
        Ok((log, EventWriter { sender, thread: Some(thread) }))
    }

    pub fn emit(&self, event: Event) {
        let Some(sender) = &self.sender else { return };
        match serde_json::to_string(&event) {
            // A closed log (the simulator is stopping) drops what comes late.
            Ok(line) => drop(sender.send(Message::Line(line))),
            Err(error) => tracing::warn!(%error, "cannot encode an event"),
        }
    }
}

/// Owns the writer thread: [`EventWriter::close`] writes out what is queued.
#[derive(Debug)]
pub struct EventWriter {
    sender: mpsc::Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl EventWriter {
    /// Flushes everything emitted so far and stops the writer.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.sender.send(Message::Close);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the events writer crashed; the events file may be incomplete");
        }
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_events(file: File, path: &Path, receiver: &mpsc::Receiver<Message>) {
    let mut writer = BufWriter::with_capacity(256 * 1024, file);
    let mut failed = false;
    let mut unflushed_since: Option<Instant> = None;
    let flush = |writer: &mut BufWriter<File>, failed: &mut bool| {
        if let Err(error) = writer.flush()
            && !std::mem::replace(failed, true)
        {
            tracing::error!(path = %path.display(), %error, "cannot write the events file");
        }
    };
    loop {
        let received = match unflushed_since {
            Some(since) => receiver.recv_timeout(FLUSH_INTERVAL.saturating_sub(since.elapsed())),
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(Message::Line(line)) => {
                let written = writer.write_all(line.as_bytes()).and_then(|()| writer.write_all(b"\n"));
                if let Err(error) = written
                    && !std::mem::replace(&mut failed, true)
                {
                    tracing::error!(path = %path.display(), %error, "cannot write the events file");
                }
                unflushed_since.get_or_insert_with(Instant::now);
            }
            Ok(Message::Close) | Err(RecvTimeoutError::Disconnected) => {
                flush(&mut writer, &mut failed);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if unflushed_since.is_some_and(|since| since.elapsed() >= FLUSH_INTERVAL) {
            flush(&mut writer, &mut failed);
            unflushed_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_the_file_promptly_and_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (log, writer) = EventLog::open(&path).unwrap();
        log.emit(Event::new(3, "m-3", EventKind::Connected));
        std::thread::sleep(FLUSH_INTERVAL * 4);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""agent":3,"machine_id":"m-3","event":"connected""#), "{text}");
        log.emit(Event::new(4, "m-4", EventKind::PrepareFailed).error("boom"));
        writer.close();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["event"], "prepare_failed");
        assert_eq!(lines[1]["error"], "boom");
        assert!(lines[1].get("generation").is_none());
    }
}
