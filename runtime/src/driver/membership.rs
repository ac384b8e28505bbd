//! [`Membership`]: the registered executors, their link actors and
//! connections, heartbeat liveness (late heartbeats get an executor
//! probed, silence past the timeout loses it) and the lost / left /
//! refused counters. What an executor is running is the
//! [`Scheduler`](super::scheduler::Scheduler)'s business.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::{ActorId, ActorRef};

use super::executor_link::LinkMsg;
use crate::connection::Connection;
use crate::protocol::PeerAddr;

/// The reason recorded for an executor that sent `Leave`.
pub(crate) const LEFT_GRACEFULLY: &str = "left gracefully";

/// How often late heartbeats are looked for.
pub(crate) const WATCH_PERIOD: Duration = Duration::from_millis(25);
/// The least lateness that gets an executor probed (a probe costs one
/// datagram, which a live executor drops; only its host's refusal counts).
pub(crate) const MIN_LATE: Duration = Duration::from_millis(50);
/// The least time between two probes of one executor.
const PROBE_EVERY: Duration = Duration::from_millis(150);

/// Heartbeat bookkeeping of one executor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    /// When it last heartbeated (or registered).
    pub(crate) last_hb: Instant,
    /// Mean absolute deviation of heartbeat gaps from the interval (an
    /// exponentially weighted average): how late a heartbeat may be before
    /// the executor is probed.
    pub(crate) hb_jitter: Duration,
    /// When it was last probed.
    pub(crate) probed_at: Option<Instant>,
}

impl Liveness {
    /// An executor that registered at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Liveness {
            last_hb: now,
            hb_jitter: Duration::ZERO,
            probed_at: None,
        }
    }

    /// A heartbeat arrived at `now`; heartbeats are due every `interval`.
    pub(crate) fn heartbeat(&mut self, now: Instant, interval: Duration) {
        let gap = now.duration_since(self.last_hb);
        let deviation = gap.abs_diff(interval);
        // EWMA with weight 1/8, as TCP's RTT variance.
        self.hb_jitter = (self.hb_jitter * 7 + deviation) / 8;
        self.last_hb = now;
    }

    /// Whether to probe it at `now`: its heartbeat is later than an
    /// interval plus twice its jitter (at least [`MIN_LATE`]), and it was
    /// not probed in the last [`PROBE_EVERY`]. Records the probe.
    pub(crate) fn probe_due(&mut self, now: Instant, interval: Duration) -> bool {
        let late = interval + (self.hb_jitter * 2).max(MIN_LATE);
        let silent = now.duration_since(self.last_hb);
        let recently = self
            .probed_at
            .is_some_and(|t| now.duration_since(t) < PROBE_EVERY);
        if silent <= late || recently {
            return false;
        }
        self.probed_at = Some(now);
        true
    }
}

/// One registered executor.
pub(crate) struct Member {
    /// Its name.
    pub(crate) name: String,
    /// Its shuffle peer endpoint (address, certificate).
    pub(crate) peer: PeerAddr,
    /// Its connection to the driver.
    pub(crate) conn: Connection,
    /// The link actor that owns the connection.
    pub(crate) link: ActorRef<LinkMsg>,
    /// Heartbeats and probes.
    pub(crate) liveness: Liveness,
    /// Links its peer endpoint dropped for breaking the protocol, as of
    /// its last heartbeat.
    pub(crate) dropped_peer_links: u64,
}

/// The registered executors and the membership counters.
pub(crate) struct Membership {
    next_id: u64,
    members: BTreeMap<u64, Member>,
    /// Link actor -> executor id, to map supervision events.
    links: HashMap<ActorId, u64>,
    /// Executors lost (timeout, failed link, dead process).
    pub(crate) lost: u64,
    /// Executors that left gracefully.
    pub(crate) left: u64,
    /// Connections refused at the handshake.
    pub(crate) refused: u64,
    /// Authenticated connections closed for breaking the protocol.
    pub(crate) dropped: u64,
    /// Links the executors' peer endpoints dropped for breaking the
    /// protocol: the sum of their reports, lost executors' included.
    pub(crate) dropped_peer_links: u64,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            next_id: 1,
            members: BTreeMap::new(),
            links: HashMap::new(),
            lost: 0,
            left: 0,
            refused: 0,
            dropped: 0,
            dropped_peer_links: 0,
        }
    }
}

impl Membership {
    /// The id the next executor to register gets.
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Executor `id` registered.
    pub(crate) fn insert(&mut self, id: u64, member: Member) {
        self.links.insert(member.link.get_id(), id);
        self.members.insert(id, member);
    }

    /// Executor `id`, if registered.
    pub(crate) fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Every registered executor, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &Member)> {
        self.members.iter().map(|(id, m)| (*id, m))
    }

    /// The executor whose link actor is `link` (forgotten: its link ended).
    pub(crate) fn take_link(&mut self, link: &ActorId) -> Option<u64> {
        self.links.remove(link)
    }

    /// Forget executor `id`, counting it as left (`reason` is
    /// [`LEFT_GRACEFULLY`]) or lost.
    pub(crate) fn remove(&mut self, id: u64, reason: &str) -> Option<Member> {
        let m = self.members.remove(&id)?;
        self.links.remove(&m.link.get_id());
        if reason == LEFT_GRACEFULLY {
            self.left += 1;
        } else {
            self.lost += 1;
        }
        Some(m)
    }

    /// A heartbeat from executor `id` at `now`, with the count of links
    /// its peer endpoint dropped so far (a running total: only its growth
    /// is added to the cluster's).
    pub(crate) fn heartbeat(
        &mut self,
        id: u64,
        now: Instant,
        interval: Duration,
        dropped_peer_links: u64,
    ) {
        if let Some(m) = self.members.get_mut(&id) {
            m.liveness.heartbeat(now, interval);
            let grown = dropped_peer_links.saturating_sub(m.dropped_peer_links);
            m.dropped_peer_links = m.dropped_peer_links.max(dropped_peer_links);
            self.dropped_peer_links += grown;
        }
    }

    /// When executor `id` was last probed.
    pub(crate) fn probed_at(&self, id: u64) -> Option<Instant> {
        self.members.get(&id).and_then(|m| m.liveness.probed_at)
    }

    /// Whether executor `id` has not heartbeated since `sent`.
    pub(crate) fn silent_since(&self, id: u64, sent: Instant) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| m.liveness.last_hb < sent)
    }

    /// Executors silent for longer than `timeout` at `now`.
    pub(crate) fn timed_out(&self, now: Instant, timeout: Duration) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(_, m)| now.duration_since(m.liveness.last_hb) > timeout)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Executors over QUIC whose heartbeat is late enough at `now` to
    /// probe, with the address their connection comes from (marked
    /// probed).
    pub(crate) fn suspects(&mut self, now: Instant, interval: Duration) -> Vec<(u64, SocketAddr)> {
        let mut out = Vec::new();
        for (&id, m) in self.members.iter_mut() {
            let Connection::Quic(conn) = &m.conn else {
                continue;
            };
            if m.liveness.probe_due(now, interval) {
                out.push((id, conn.remote_address()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(200);

    #[test]
    fn a_heartbeat_on_time_is_not_probed_and_a_late_one_is_once_per_period() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        // Punctual heartbeats: no jitter, so late means HB + MIN_LATE.
        for i in 1..=4 {
            l.heartbeat(t0 + HB * i, HB);
        }
        assert_eq!(l.hb_jitter, Duration::ZERO);
        let last = t0 + HB * 4;
        assert!(!l.probe_due(last + HB + MIN_LATE, HB));
        let late = last + HB + MIN_LATE + Duration::from_millis(1);
        assert!(l.probe_due(late, HB));
        assert_eq!(l.probed_at, Some(late));
        // Not again within PROBE_EVERY, again after it.
        assert!(!l.probe_due(late + PROBE_EVERY - Duration::from_millis(1), HB));
        assert!(l.probe_due(late + PROBE_EVERY, HB));
    }

    #[test]
    fn irregular_heartbeats_widen_the_lateness_allowed() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        // Gaps of 200 and 600 ms alternately: deviation 0 and 400 ms.
        let mut t = t0;
        for i in 0..40 {
            t += if i % 2 == 0 { HB } else { HB * 3 };
            l.heartbeat(t, HB);
        }
        assert!(
            l.hb_jitter > Duration::from_millis(150),
            "{:?}",
            l.hb_jitter
        );
        // Late by more than HB + MIN_LATE, but within HB + 2 * jitter.
        assert!(!l.probe_due(t + HB + MIN_LATE * 2, HB));
        assert!(l.probe_due(t + HB + l.hb_jitter * 2 + Duration::from_millis(1), HB));
    }
}
