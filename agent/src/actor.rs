//! The handle every long-running actor (supervisor, HA loop) hands out: a `watch` of its state
//! and an orderly shutdown that waits until the actor has finished.

use tokio::sync::{mpsc, oneshot, watch};

pub struct ActorHandle<S> {
    /// The actor's current state; readers never block it.
    pub state: watch::Receiver<S>,
    shutdown: mpsc::Sender<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the actor's loop receives: a request to stop, carrying the acknowledgement to send
/// once it has cleaned up.
pub type ShutdownRx = mpsc::Receiver<oneshot::Sender<()>>;

impl<S> ActorHandle<S> {
    /// Wrap a spawned actor. `spawn` gets the shutdown receiver to select on.
    pub fn spawn<F, Fut>(initial: S, run: F) -> ActorHandle<S>
    where
        F: FnOnce(watch::Sender<S>, ShutdownRx) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (state_tx, state) = watch::channel(initial);
        let (shutdown, shutdown_rx) = mpsc::channel(1);
        let task = tokio::spawn(run(state_tx, shutdown_rx));
        ActorHandle {
            state,
            shutdown,
            task,
        }
    }

    /// Ask the actor to stop and wait until it has.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.shutdown.send(tx).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}
