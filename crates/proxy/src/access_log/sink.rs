//! Where log lines go: one writer thread per file path, fed through a
//! bounded queue. A request only formats its line and hands it over; it never
//! waits on the file. A full queue (a stalled disk or pipe) drops lines and
//! counts them, as Envoy's bounded access-log buffer does.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// Lines waiting to be written, per path: with the writer's pace, up to
/// 160,000 lines a second before any is dropped.
const QUEUE: usize = 16_384;
/// How often the writer wakes to write what came (Envoy flushes every 1 s).
/// It sleeps rather than waits on the queue, so a request handing over its
/// line never has to wake it (no futex call per line), and the file sees one
/// write per wake-up, not one per line.
const WRITE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct Sink {
    path: String,
    lines: SyncSender<String>,
    dropped: AtomicU64,
}

impl Sink {
    /// The sink for `path`, shared by every log that names it (a config
    /// push keeps the writer it had). The file is opened for appending now,
    /// so a path that cannot be written refuses the config.
    pub fn for_path(path: &str) -> io::Result<Arc<Sink>> {
        static OPEN: OnceLock<Mutex<HashMap<String, Weak<Sink>>>> = OnceLock::new();
        let mut open = OPEN
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sink) = open.get(path).and_then(Weak::upgrade) {
            return Ok(sink);
        }
        open.retain(|_, sink| sink.strong_count() > 0);
        let sink = Arc::new(Self::open(path)?);
        open.insert(path.to_owned(), Arc::downgrade(&sink));
        Ok(sink)
    }

    fn open(path: &str) -> io::Result<Sink> {
        let file = open_file(path)?;
        let (lines, queue) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_lines(file, &queue))?;
        Ok(Sink {
            path: path.to_owned(),
            lines,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn write(&self, line: String) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let before = self.dropped.fetch_add(1, Ordering::Relaxed);
                if before.is_power_of_two() {
                    tracing::warn!(path = %self.path, dropped = before + 1, "access log queue full: lines dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped since the sink opened.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The file to append to. The process's own stdout and stderr are written
/// through their descriptors, not reopened by path: a proxy running as its
/// own user may not open the file or pipe its container runtime gave it.
fn open_file(path: &str) -> io::Result<std::fs::File> {
    use std::os::fd::AsFd;
    let inherited = match path {
        "/dev/stdout" => Some(io::stdout().as_fd().try_clone_to_owned()?),
        "/dev/stderr" => Some(io::stderr().as_fd().try_clone_to_owned()?),
        _ => None,
    };
    match inherited {
        Some(fd) => Ok(std::fs::File::from(fd)),
        None => OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(path)),
    }
}

/// Every [`WRITE_EVERY`], writes what the queue holds in as few writes as
/// the buffer allows, until every sender is gone and the queue is empty.
fn write_lines(file: std::fs::File, queue: &Receiver<String>) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, file);
    loop {
        std::thread::sleep(WRITE_EVERY);
        let ended = loop {
            match queue.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(line.as_bytes());
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        let _ = out.flush();
        if ended {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_and_one_path_shares_one_writer() {
        let dir = std::env::temp_dir().join(format!("oxmesh-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("access.log");
        let path = path.to_str().expect("utf-8");
        let a = Sink::for_path(path).expect("open");
        let b = Sink::for_path(path).expect("open");
        assert!(Arc::ptr_eq(&a, &b));
        a.write("one\n".to_owned());
        b.write("two\n".to_owned());
        drop((a, b));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut written = String::new();
        while std::time::Instant::now() < deadline {
            written = std::fs::read_to_string(path).unwrap_or_default();
            if written.lines().count() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(written, "one\ntwo\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_path_that_cannot_be_opened_is_an_error() {
        let error = Sink::for_path("/proc/oxmesh/no/such/dir/log").expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
