//! Plugin stdout and stderr, captured with a cap and turned into the plugin's log lines (stdout
//! at info, stderr at warn).

use bytes::Bytes;
use std::sync::{Arc, Mutex, PoisonError};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of output (stdout and stderr together) kept per call; the rest is counted and dropped,
/// never an error for the guest.
pub const OUTPUT_CAP_BYTES: usize = 16 * 1024;

/// What a call wrote.
#[derive(Debug, Default)]
pub struct Output {
    /// Kept bytes of stdout.
    pub stdout: Vec<u8>,
    /// Kept bytes of stderr.
    pub stderr: Vec<u8>,
    /// Bytes dropped beyond the cap.
    pub dropped: usize,
}

/// The capture of one instance's stdout and stderr.
#[derive(Debug, Clone, Default)]
pub struct CapturedOutput(Arc<Mutex<Output>>);

impl CapturedOutput {
    /// Takes what was written since the last call.
    pub fn take(&self) -> Output {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The stream that writes into stdout (`false`) or stderr (`true`).
    pub fn stream(&self, stderr: bool) -> Stream {
        Stream {
            output: self.clone(),
            stderr,
        }
    }
}

/// One of the two streams of a [`CapturedOutput`].
#[derive(Debug, Clone)]
pub struct Stream {
    output: CapturedOutput,
    stderr: bool,
}

impl Stream {
    fn write(&self, bytes: &[u8]) {
        let mut output = self.output.0.lock().unwrap_or_else(PoisonError::into_inner);
        let room = OUTPUT_CAP_BYTES.saturating_sub(output.stdout.len() + output.stderr.len());
        let kept = bytes.len().min(room);
        let buffer = if self.stderr {
            &mut output.stderr
        } else {
            &mut output.stdout
        };
        buffer.extend_from_slice(&bytes[..kept]);
        output.dropped += bytes.len() - kept;
    }
}

impl IsTerminal for Stream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Stream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Stream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        Stream::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Stream::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The panic message in what a Rust guest wrote to stderr
/// (`thread '…' panicked at src/lib.rs:12:5:` then the message), as `message (at location)`.
pub fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    let header = lines.find(|line| line.contains(" panicked at "))?;
    let location = header
        .split(" panicked at ")
        .nth(1)
        .map(|l| l.trim_end_matches(':'))
        .unwrap_or_default();
    let message: Vec<&str> = lines
        .take_while(|line| !line.starts_with("note: "))
        .collect();
    Some(format!("{} (at {location})", message.join(" ").trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_panic_reads_as_its_message_and_location() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:140:24:\nadversary panics on purpose\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "adversary panics on purpose (at src/lib.rs:140:24)"
        );
        assert_eq!(panic_message("just output"), None);
    }

    #[test]
    fn stdout_and_stderr_share_one_cap() {
        let output = CapturedOutput::default();
        output.stream(false).write(b"out\n");
        output.stream(true).write(&vec![b'e'; OUTPUT_CAP_BYTES]);
        let taken = output.take();
        assert_eq!(taken.stdout, b"out\n");
        assert_eq!(taken.stderr.len(), OUTPUT_CAP_BYTES - 4);
        assert_eq!(taken.dropped, 4);
        assert!(output.take().stdout.is_empty());
    }
}
