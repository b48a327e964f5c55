//! Ctrl-C for the whole process, as a [`Shutdown`] passed into the run.

use crate::runtime::ports::Shutdown;
use tracing::warn;

/// Takes Ctrl-C (SIGINT) over for the rest of the process, on a thread of its own, and returns
/// the [`Shutdown`] it requests: the first Ctrl-C stops the sources of the run it is passed to
/// (graceful: everything in flight is processed and flushed), the second exits at once. The
/// handler is installed when this returns (signals are the process's, so later calls return the
/// same token). `plume run` calls it before it even loads the pipeline, so an early Ctrl-C is
/// never missed (it ends the run as soon as it starts).
pub fn shutdown_on_ctrl_c() -> Shutdown {
    static SHUTDOWN: std::sync::OnceLock<Shutdown> = std::sync::OnceLock::new();
    SHUTDOWN
        .get_or_init(|| {
            let shutdown = Shutdown::new();
            let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
            let requested = shutdown.clone();
            let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    warn!("no Ctrl-C handling: its runtime could not start");
                    return;
                };
                runtime.block_on(async move {
                    let mut interrupts = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                    {
                        Ok(s) => s,
                        Err(error) => {
                            warn!(%error, "no Ctrl-C handling");
                            return;
                        }
                    };
                    let _ = ready_tx.send(());
                    interrupts.recv().await;
                    warn!("interrupted: stopping the sources, draining and flushing (Ctrl-C again to quit at once)");
                    requested.request();
                    interrupts.recv().await;
                    std::process::exit(130);
                });
            });
            if spawned.is_ok() {
                // returns at once if the thread gave up (its sender is gone)
                let _ = ready.recv();
            }
            shutdown
        })
        .clone()
}
