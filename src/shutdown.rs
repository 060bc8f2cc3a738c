//! A shutdown signal every task can wait on (SIGINT/SIGTERM, or a test asking).

use tokio::sync::watch;

/// Cloneable handle: `wait()` resolves once shutdown was requested.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that requests shutdown.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

/// A new shutdown pair.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when shutdown is requested (or the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|&v| v).await;
    }
}

/// Trigger on SIGINT or SIGTERM.
pub fn on_signals(trigger: ShutdownTrigger) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the transaction in flight"),
            _ = int.recv() => tracing::info!("SIGINT: finishing the transaction in flight"),
        }
        trigger.trigger();
    });
}
