//! Ctrl-C for the whole process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

/// Takes Ctrl-C (SIGINT) over for the rest of the process, on a thread of its own, and returns
/// the flag it sets: the first Ctrl-C stops the sources of [`run`] (graceful: everything in flight
/// is processed and flushed), the second exits at once. The handler is installed when this
/// returns; later calls return the same flag. `plume run` calls it before it even loads the
/// pipeline, so an early Ctrl-C is never missed (it ends the run as soon as it starts).
pub fn catch_interrupts() -> Arc<AtomicBool> {
    static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    STOP.get_or_init(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let flag = stop.clone();
        let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                warn!("no Ctrl-C handling: its runtime could not start");
                return;
            };
            runtime.block_on(async move {
                let mut interrupts = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                    Ok(s) => s,
                    Err(error) => {
                        warn!(%error, "no Ctrl-C handling");
                        return;
                    }
                };
                let _ = ready_tx.send(());
                interrupts.recv().await;
                warn!("interrupted: stopping the sources, draining and flushing (Ctrl-C again to quit at once)");
                flag.store(true, Ordering::Relaxed);
                interrupts.recv().await;
                std::process::exit(130);
            });
        });
        if spawned.is_ok() {
            // returns at once if the thread gave up (its sender is gone)
            let _ = ready.recv();
        }
        stop
    })
    .clone()
}
