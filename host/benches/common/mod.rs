//! What the benchmarks share: `sluice serve` in this process.

use sluice::config::Config;
use std::net::SocketAddr;
use std::time::Duration;

/// A server running in this process on a 2-thread tokio runtime.
pub struct Served {
    /// The runtime serving it; benchmarks can run client tasks on it.
    pub runtime: tokio::runtime::Runtime,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    /// Starts serving `config` and waits until it listens.
    pub fn start(config: Config) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let roles = sluice::roles::Roles::all(&config);
        let server = runtime.spawn(sluice::server::serve(
            config,
            roles,
            async move {
                let _ = stopped.await;
            },
            move |addr| addr_tx.send(addr).unwrap(),
        ));
        let addr = addr_rx.recv_timeout(Duration::from_secs(600)).unwrap();
        Self {
            runtime,
            addr,
            stop,
            server,
        }
    }

    /// Shuts the server down cleanly.
    pub fn stop(self) {
        self.stop.send(()).unwrap();
        self.runtime.block_on(self.server).unwrap().unwrap();
    }
}
