//! [`DriverActor`]: the one actor that owns the driver's state
//! ([`Membership`] and [`Scheduler`]), so there are no locks around it. It
//! turns messages into calls on that state and carries out what they
//! decide: link actors spawned and stopped, tasks and control frames sent,
//! probes started.

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::config::DriverConfig;
use super::executor_link::{ExecutorLink, LinkArgs, LinkMsg};
use super::membership::{Liveness, Member, Membership, LEFT_GRACEFULLY, MIN_LATE, WATCH_PERIOD};
use super::messages::DriverMsg;
use super::scheduler::Scheduler;
use crate::liveness::probe;
use crate::monitor::{Event, MonitorSink};
use crate::protocol::{ClusterStatus, ExecutorStatus, ToExecutor};
use crate::transport;

/// The driver actor's state.
pub(crate) struct DriverState {
    config: DriverConfig,
    members: Membership,
    scheduler: Scheduler,
    /// The actor itself (for probes to report back).
    myself: Option<ActorRef<DriverMsg>>,
    /// Where snapshots and membership changes go for the dashboard.
    monitor: MonitorSink,
    /// When the last snapshot went to the monitor.
    published: Instant,
}

/// How often the driver hands the monitor a snapshot of its state.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// The driver actor (see the module documentation).
pub(crate) struct DriverActor;

impl Actor for DriverActor {
    type Msg = DriverMsg;
    type State = DriverState;
    type Arguments = (DriverConfig, MonitorSink);

    async fn pre_start(
        &self,
        myself: ActorRef<DriverMsg>,
        (config, monitor): (DriverConfig, MonitorSink),
    ) -> std::result::Result<DriverState, ActorProcessingErr> {
        let period = config.heartbeat;
        let ticker = myself.clone();
        let myself_for_state = myself.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if ticker.cast(DriverMsg::Tick).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_PERIOD).await;
                if myself.cast(DriverMsg::Watch).is_err() {
                    break;
                }
            }
        });
        let mut scheduler = Scheduler::new(config.clone());
        scheduler.report_to(monitor.clone());
        Ok(DriverState {
            scheduler,
            config,
            members: Membership::default(),
            myself: Some(myself_for_state),
            monitor,
            published: Instant::now() - PUBLISH_EVERY,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DriverMsg>,
        msg: DriverMsg,
        st: &mut DriverState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            DriverMsg::Joined {
                name,
                cores,
                pid,
                peer,
                conn,
                send,
                recv,
            } => {
                let id = st.members.next_id();
                let remote = conn.peer();
                let args = LinkArgs {
                    id,
                    conn: conn.clone(),
                    send,
                    recv,
                    driver: myself.clone(),
                    max_control: st.config.max_control_frame,
                    max_bulk: st.config.max_bulk_frame,
                    executor_timeout: st.config.executor_timeout,
                };
                let link = match Actor::spawn_linked(None, ExecutorLink, args, myself.get_cell())
                    .await
                {
                    Ok((link, _)) => link,
                    Err(e) => {
                        warn!(peer = %remote, %name, error = %e, "could not start the executor's link; dropping it");
                        conn.close(transport::CLOSE_NORMAL, b"driver could not serve");
                        return Ok(());
                    }
                };
                info!(executor = id, %name, pid, cores, peer = %remote, shuffle_endpoint = %peer.addr, "executor registered");
                // First on the control stream: the link's mailbox is ordered.
                let _ = link.cast(LinkMsg::Control(ToExecutor::Registered {
                    executor_id: id,
                    heartbeat_ms: st.config.heartbeat.as_millis() as u64,
                    timeout_ms: st.config.executor_timeout.as_millis() as u64,
                }));
                st.scheduler.add_executor(id, name.clone(), peer, cores);
                st.members.insert(
                    id,
                    Member {
                        name,
                        peer,
                        conn,
                        link,
                        liveness: Liveness::new(Instant::now()),
                        dropped_peer_links: 0,
                    },
                );
                st.schedule();
            }
            DriverMsg::Heartbeat {
                id,
                dropped_peer_links,
            } => {
                st.members
                    .heartbeat(id, Instant::now(), st.config.heartbeat, dropped_peer_links);
            }
            DriverMsg::Watch => {
                st.watch();
                // Every 25 ms: the snapshot goes out every half second
                // whatever the heartbeat period.
                let now = Instant::now();
                if now.duration_since(st.published) >= PUBLISH_EVERY {
                    st.published = now;
                    st.publish();
                }
            }
            DriverMsg::GoneReported(id, reason) => {
                if let Some(sent) = st.members.probed_at(id) {
                    let _ = myself.cast(DriverMsg::Gone(id, sent, reason));
                }
            }
            DriverMsg::Gone(id, sent, reason) => {
                // A heartbeat after the probe left proves it alive: a
                // refusal then is not trusted.
                if st.members.silent_since(id, sent) {
                    st.remove_executor(id, &reason);
                    st.schedule();
                }
            }
            DriverMsg::Report(id, report) => {
                st.scheduler.on_report(id, report, Instant::now());
                st.schedule();
            }
            DriverMsg::RunStage {
                job,
                stage,
                tasks,
                reply,
            } => {
                st.scheduler.add_stage(job, stage, tasks, Some(reply));
                st.schedule();
            }
            DriverMsg::RunMapStage {
                job,
                stage,
                shuffle,
                tasks,
                reply,
            } => {
                st.scheduler
                    .add_map_stage(job, stage, shuffle, tasks, Some(reply));
                st.schedule();
            }
            DriverMsg::FreeShuffle(shuffle) => {
                if st.scheduler.free_shuffle(shuffle) {
                    tracing::debug!(shuffle, "shuffle freed");
                    for (_, m) in st.members.iter() {
                        let _ = m
                            .link
                            .cast(LinkMsg::Control(ToExecutor::FreeShuffle { shuffle }));
                    }
                }
            }
            DriverMsg::FreeBlocks(ids) => {
                for (_, m) in st.members.iter() {
                    for &shuffle in &ids {
                        let _ = m
                            .link
                            .cast(LinkMsg::Control(ToExecutor::FreeShuffle { shuffle }));
                    }
                }
            }
            DriverMsg::Members(reply) => {
                let members = st.members.iter().map(|(id, m)| (id, m.peer)).collect();
                let _ = reply.send(members);
            }
            DriverMsg::Status(reply) => {
                let _ = reply.send(st.status());
            }
            DriverMsg::Refused => st.members.refused += 1,
            DriverMsg::LinkDropped => st.members.dropped += 1,
            DriverMsg::Tick => {
                let now = Instant::now();
                let timeout = st.config.executor_timeout;
                for id in st.members.timed_out(now, timeout) {
                    st.remove_executor(id, &format!("no heartbeat for {} ms", timeout.as_millis()));
                }
                st.scheduler.expire_exclusions(now);
                st.scheduler.fail_if_starved(now);
                let interval = st.config.heartbeat;
                for (_, m) in st.members.iter() {
                    // Not to an executor that has gone quiet (until it
                    // heartbeats again; well within its own timeout): if
                    // its process died, every datagram to it draws an ICMP
                    // port unreachable from its host, and hosts rate-limit
                    // those per destination: they are kept for the probes.
                    if now.duration_since(m.liveness.last_hb) > interval + MIN_LATE {
                        continue;
                    }
                    let _ = m.link.cast(LinkMsg::Control(ToExecutor::Heartbeat));
                }
                st.schedule();
            }
            DriverMsg::Shutdown => {
                // Links are children: stopping the driver kills them, so
                // first let each deliver its Shutdown frame.
                let mut done = Vec::new();
                for (_, m) in st.members.iter() {
                    let (tx, rx) = oneshot::channel();
                    if m.link.cast(LinkMsg::Shutdown(tx)).is_ok() {
                        done.push(rx);
                    }
                }
                for rx in done {
                    let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
                }
                myself.stop(None);
            }
            #[cfg(test)]
            DriverMsg::CrashLink(id) => {
                if let Some(m) = st.members.get(id) {
                    let _ = m.link.cast(LinkMsg::Crash);
                }
            }
        }
        Ok(())
    }

    /// A link actor ended: its executor is lost (or left, if it said so);
    /// the driver itself keeps serving. Events of links the driver already
    /// removed (heartbeat timeout, task send failure) are ignored.
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<DriverMsg>,
        event: SupervisionEvent,
        st: &mut DriverState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let (who, reason) = match event {
            SupervisionEvent::ActorTerminated(who, _, reason) => (
                who,
                reason.unwrap_or_else(|| "executor link stopped".into()),
            ),
            SupervisionEvent::ActorFailed(who, err) => {
                (who, format!("executor link failed: {err}"))
            }
            _ => return Ok(()),
        };
        if let Some(id) = st.members.take_link(&who.get_id()) {
            st.remove_executor(id, &reason);
            st.schedule();
        }
        Ok(())
    }
}

impl DriverState {
    /// Probes the executors whose heartbeat is late: a heartbeat interval
    /// plus twice its observed jitter (at least [`MIN_LATE`]) without
    /// one. A probe is a datagram to the port the executor's connection
    /// comes from, on a socket connected to it: if its host answers ICMP
    /// port unreachable, nothing listens there any more (the process died:
    /// `kill -9`, a crash) and the executor is lost at once, instead of
    /// after the loss timeout. A host that is down or cut off answers
    /// nothing, and the loss timeout decides.
    fn watch(&mut self) {
        let now = Instant::now();
        let suspects = self.members.suspects(now, self.config.heartbeat);
        for &(id, addr) in &suspects {
            let me = self.myself.clone();
            tokio::spawn(async move {
                if let Some(reason) = probe(addr).await {
                    if let Some(me) = me {
                        let _ = me.cast(DriverMsg::Gone(id, now, reason));
                    }
                }
            });
        }
        // The other executors probe it too: a host rate-limits its ICMP
        // answers per destination, and the driver's own allowance is often
        // spent by QUIC resending what it had in flight to the dead
        // process; theirs is their own.
        for (id, addr) in suspects {
            for (other, m) in self.members.iter() {
                if other != id {
                    let _ = m
                        .link
                        .cast(LinkMsg::Control(ToExecutor::Probe { executor: id, addr }));
                }
            }
        }
    }

    /// Send the tasks the scheduler places now to their executors' links.
    fn schedule(&mut self) {
        for (exec_id, task) in self.scheduler.schedule() {
            if let Some(m) = self.members.get(exec_id) {
                // A failed send fails the link, which loses the executor.
                let _ = m.link.cast(LinkMsg::Task(Box::new(task)));
            }
        }
    }

    /// Executor `id` is lost or left: stop its link, close its
    /// connection, tell the others, and let the scheduler re-queue its
    /// work.
    fn remove_executor(&mut self, id: u64, reason: &str) {
        let Some(m) = self.members.remove(id, reason) else {
            return;
        };
        m.link.stop(Some(reason.to_string()));
        let requeued = self.scheduler.worker(id).map_or(0, |w| w.running.len());
        if reason == LEFT_GRACEFULLY {
            info!(executor = id, name = %m.name, requeued, "executor left; its partitions go to the others");
        } else {
            warn!(executor = id, name = %m.name, reason, requeued, "executor lost");
        }
        self.monitor.send(Event::ExecutorGone {
            id,
            name: m.name.clone(),
            reason: reason.to_string(),
            left: reason == LEFT_GRACEFULLY,
            bytes: m.conn.wire_bytes(),
        });
        m.conn
            .close(transport::CLOSE_NORMAL, b"declared lost by driver");
        // Fetches from it on the others fail now, not when their links
        // idle out.
        for (_, other) in self.members.iter() {
            let _ = other
                .link
                .cast(LinkMsg::Control(ToExecutor::PeerLost { peer: m.peer.addr }));
        }
        self.scheduler.remove_executor(id, reason);
    }

    /// Hands the monitor a snapshot: the status and every link's bytes.
    fn publish(&self) {
        let status = self.status();
        let link_bytes = status
            .executors
            .iter()
            .map(|e| {
                self.members
                    .get(e.id)
                    .map_or((0, 0), |m| m.conn.wire_bytes())
            })
            .collect();
        self.monitor.send(Event::Cluster { status, link_bytes });
    }

    fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        ClusterStatus {
            executors: self
                .members
                .iter()
                .map(|(id, m)| {
                    let w = self.scheduler.worker(id);
                    ExecutorStatus {
                        id,
                        name: m.name.clone(),
                        addr: m.conn.describe(),
                        cores: w.map_or(0, |w| w.cores),
                        running: w.map_or(0, |w| w.running.len() as u32),
                        completed: w.map_or(0, |w| w.completed),
                        failed: w.map_or(0, |w| w.failed),
                        excluded: w.is_some_and(|w| w.excluded),
                        last_heartbeat_ms: now.duration_since(m.liveness.last_hb).as_millis()
                            as u64,
                        peer_addr: m.peer.addr.to_string(),
                        peer_fingerprint: m
                            .peer
                            .fingerprint
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect(),
                        dropped_peer_links: m.dropped_peer_links,
                    }
                })
                .collect(),
            lost: self.members.lost,
            left: self.members.left,
            pending_tasks: self.scheduler.pending_tasks() as u64,
            jobs_finished: self.scheduler.jobs_finished(),
            refused_connections: self.members.refused,
            dropped_links: self.members.dropped,
            dropped_peer_links: self.members.dropped_peer_links,
            live_shuffles: self.scheduler.live_shuffles() as u64,
        }
    }
}
