//! Watched tokio tasks: the reader and sender tasks of a connection actor
//! report how they ended (an error or a panic) to that actor, so no failure
//! of theirs goes unnoticed by the supervision tree.

use std::future::Future;

use tokio::task::{AbortHandle, JoinError};

/// The message of a panicked or cancelled task.
pub(crate) fn panic_message(e: JoinError) -> String {
    if e.is_panic() {
        payload_message(e.into_panic())
    } else {
        format!("cancelled: {e}")
    }
}

/// "panicked: <message>" for a caught panic's payload.
pub(crate) fn payload_message(p: Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    format!("panicked: {msg}")
}

/// Spawn `fut`; if it panics, call `on_panic` with `what` and the panic
/// message (a cancelled task, aborted through the returned handle, is
/// reported to nobody: its owner cancelled it).
pub(crate) fn spawn_watched<F, P>(what: &'static str, fut: F, on_panic: P) -> AbortHandle
where
    F: Future<Output = ()> + Send + 'static,
    P: FnOnce(String) + Send + 'static,
{
    let task = tokio::spawn(fut);
    let abort = task.abort_handle();
    tokio::spawn(async move {
        if let Err(e) = task.await {
            if e.is_panic() {
                on_panic(format!("{what} {}", panic_message(e)));
            }
        }
    });
    abort
}

/// Aborts its tasks when dropped (a connection actor's readers die with
/// its state, also when the actor fails and `post_stop` does not run).
#[derive(Default)]
pub(crate) struct TaskSet(Vec<AbortHandle>);

impl TaskSet {
    /// Track one more task.
    pub(crate) fn push(&mut self, h: AbortHandle) {
        self.0.retain(|h| !h.is_finished());
        self.0.push(h);
    }
}

impl Drop for TaskSet {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_panic_is_reported_and_an_abort_is_not() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t = tx.clone();
        spawn_watched("reader", async { panic!("boom") }, move |m| {
            let _ = t.send(m);
        });
        let msg = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg, "reader panicked: boom");
        let mut set = TaskSet::default();
        set.push(spawn_watched(
            "sleeper",
            tokio::time::sleep(Duration::from_secs(60)),
            move |m| {
                let _ = tx.send(m);
            },
        ));
        drop(set);
        let r = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(matches!(r, Ok(None) | Err(_)), "{r:?}");
    }
}
