//! [`ExecutorSupervisor`]: the root of an executor's supervision tree.
//!
//! The task runner ([`super::ExecutorActor`]) is spawned linked to it. When
//! the runner fails (a panic in its handler, or a task report that could
//! not be sent, i.e. a broken connection) or stops while the executor is
//! still serving, the supervisor hands the cause to `run_executor`, which
//! exits with [`Error::ActorFailed`](crate::Error::ActorFailed). There is no
//! reconnect: the driver has already re-queued this executor's tasks and
//! forgotten its cache, so a restart (by `kiln local`, systemd, …)
//! registers a fresh executor, which is all a reconnect could achieve.

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tracing::warn;

/// The supervisor of an executor's task runner.
pub(crate) struct ExecutorSupervisor;

/// Where the first child failure is reported.
pub(crate) struct SupervisorState {
    failed: Option<oneshot::Sender<String>>,
}

impl Actor for ExecutorSupervisor {
    type Msg = ();
    type State = SupervisorState;
    type Arguments = oneshot::Sender<String>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        failed: oneshot::Sender<String>,
    ) -> std::result::Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            failed: Some(failed),
        })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let cause = match event {
            SupervisionEvent::ActorFailed(_, err) => err.to_string(),
            SupervisionEvent::ActorTerminated(_, _, reason) => format!(
                "stopped: {}",
                reason.unwrap_or_else(|| "no reason given".into())
            ),
            _ => return Ok(()),
        };
        warn!(%cause, "executor child actor ended");
        if let Some(tx) = st.failed.take() {
            let _ = tx.send(cause);
        }
        myself.stop(None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Fragile;

    impl Actor for Fragile {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<()>,
            _args: (),
        ) -> std::result::Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _myself: ActorRef<()>,
            _msg: (),
            _st: &mut (),
        ) -> std::result::Result<(), ActorProcessingErr> {
            panic!("runner bug")
        }
    }

    #[tokio::test]
    async fn a_panicking_child_is_reported_with_its_message() {
        let (tx, rx) = oneshot::channel();
        let (sup, sup_handle) = Actor::spawn(None, ExecutorSupervisor, tx).await.unwrap();
        let (child, _) = Actor::spawn_linked(None, Fragile, (), sup.get_cell())
            .await
            .unwrap();
        child.cast(()).unwrap();
        let cause = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert!(cause.contains("runner bug"), "{cause}");
        // The supervisor stops after reporting.
        tokio::time::timeout(Duration::from_secs(5), sup_handle)
            .await
            .unwrap()
            .unwrap();
    }
}
