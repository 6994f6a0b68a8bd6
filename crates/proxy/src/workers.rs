//! The data plane's threads: one single-threaded runtime per worker, each with
//! its own listening socket (SO_REUSEPORT spreads connections across them) and
//! its own connection pool, as Envoy's workers are. A connection and every
//! upstream request it makes stay on one thread, so a request costs no
//! cross-thread wake-ups and shares no locks.

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub struct Workers {
    handles: Vec<Handle>,
    /// Dropping these ends the workers' runtimes.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut handles = Vec::new();
        let mut stop = Vec::new();
        for n in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("oxmesh-worker-{n}"))
                .spawn(move || {
                    let _ = runtime.block_on(rx);
                })?;
        }
        Ok(Self {
            handles,
            _stop: stop,
        })
    }

    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }
}
