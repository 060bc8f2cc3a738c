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

/// The background tasks of a run (HTTP endpoints, slot monitor, gauges): each listens
/// on [`TaskSet::shutdown`]; [`TaskSet::join`] stops and joins them all.
pub struct TaskSet {
    set: tokio::task::JoinSet<()>,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
}

impl Default for TaskSet {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskSet {
    pub fn new() -> Self {
        let (trigger, shutdown) = channel();
        TaskSet {
            set: tokio::task::JoinSet::new(),
            trigger,
            shutdown,
        }
    }

    /// The signal the tasks of this set stop on.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.set.spawn(task);
    }

    /// Ask every task to stop and wait for them (at most `within`; then abort the rest).
    pub async fn join(mut self, within: std::time::Duration) {
        self.trigger.trigger();
        let all = async { while self.set.join_next().await.is_some() {} };
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("background tasks did not stop within {within:?}; aborting them");
            self.set.abort_all();
        }
    }
}
