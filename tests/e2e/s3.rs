//! A real S3-compatible server for the tests: `s3s-fs`, which verifies SigV4 signatures and
//! keeps objects as plain files, so tests read them back from its folder. `tests/run.sh`
//! installs it and sets `SLUICE_S3S_FS`; a test fails, never skips, without it.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "sluice-test";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "sluice-test-secret";
/// The bucket the tests use.
pub const BUCKET: &str = "exports";

/// A running `s3s-fs` on a free port, killed when dropped.
pub struct S3Server {
    child: Option<Child>,
    /// The folder behind the server; buckets are its subfolders.
    pub root: tempfile::TempDir,
    port: u16,
}

fn binary() -> PathBuf {
    let path = std::env::var_os("SLUICE_S3S_FS").map(PathBuf::from).unwrap_or_else(|| {
        panic!("SLUICE_S3S_FS is not set: run the tests with tests/run.sh, which installs the s3s-fs S3 server")
    });
    assert!(
        path.is_file(),
        "{} is missing: run tests/run.sh, which installs s3s-fs",
        path.display()
    );
    path
}

impl S3Server {
    /// Starts a server with an empty [`BUCKET`].
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            child: None,
            root,
            port,
        };
        server.resume();
        server
    }

    /// Stops the server (its objects stay).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the server: a stopped server accepts requests
    /// but answers none until continued.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().unwrap();
        crate::process::signal(child.id(), signal);
    }

    /// Starts the stopped server again, on the same port and folder.
    pub fn resume(&mut self) {
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `[object_stores.<name>]` for this server's bucket.
    pub fn store_config(&self, name: &str) -> String {
        format!(
            "[object_stores.{name}]\nkind = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             path_style = true\nregion = \"us-east-1\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n",
            self.port
        )
    }

    /// Every object of [`BUCKET`] by key (the server's own bookkeeping, dot files, left out).
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        files(&self.root.path().join(BUCKET))
    }
}

/// Every object under `folder` laid out as `s3s-fs` and the local folder store keep them: the
/// key is the path relative to `folder` (names starting with `.`, bookkeeping, left out).
/// Empty if there is no such folder.
pub fn files(folder: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![folder.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let key = path
                    .strip_prefix(folder)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                found.insert(key, std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
