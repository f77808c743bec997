//! A child process that is killed (SIGKILL) when its handle drops, with its output
//! in a log file that is printed if the test fails.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    generation: u32,
    exited: Option<ExitStatus>,
}

impl Process {
    pub fn spawn(name: &str, command: Command, log: &Path) -> Process {
        Self::spawn_generation(name, command, log, 0)
    }

    pub fn spawn_generation(name: &str, mut command: Command, log: &Path, generation: u32) -> Process {
        let file = File::create(log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process { name: name.to_owned(), child, log: log.to_owned(), generation, exited: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_status() {
            panic!("{} exited with {status}:\n{}", self.name, self.log());
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("{} did not exit within {timeout:?}:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("----- {} (last {} lines) -----", self.name, tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
