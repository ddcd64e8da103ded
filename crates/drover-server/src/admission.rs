//! Admission control for the one listening port: bounds on what a peer can hold before it has
//! proved who it is, so that slow or hostile clients cannot starve agents and operators of file
//! descriptors, memory or handshake time.
//!
//! A connection is *unauthenticated* from `accept` until an agent's Hello is accepted or an HTTP
//! request carries a valid token. Unauthenticated connections are capped per source address (a
//! new one over the cap is refused) and in total. When the total is reached, room is made by
//! evicting the oldest connection of the address holding the most, if it holds more than the
//! newcomer's address would; else the oldest of all, once it has had [`Limits::evict_after`]
//! to finish; else the newcomer is refused. So attackers holding slots cannot keep agents out
//! (their connections are the oldest or the most), and a whole fleet reconnecting from behind
//! one NAT at once is admitted as fast as handshakes finish, instead of evicting handshakes
//! half done (which wasted their work: 75 s and 2 ms of server CPU per agent for 19,000 agents
//! before). They live at most [`Limits::handshake_timeout`] (then HTTP connections shut down
//! gracefully). Agent connections are also capped per node identity, so one stolen certificate
//! cannot open thousands of tunnels.
//!
//! The counts are per server process on purpose: what they protect (descriptors, memory) is
//! per process, so a second replica keeps its own.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use drover_store::NodeId;
use tokio_util::sync::CancellationToken;

/// The bounds; [`crate::ServerConfig`] carries them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Unauthenticated connections open at once, from everyone; past it the oldest is evicted.
    pub max_unauthenticated: usize,
    /// Unauthenticated connections open at once from one address. Generous, because a fleet
    /// behind one NAT reconnects from one address after a server restart.
    pub max_unauthenticated_per_address: usize,
    /// How long an unauthenticated connection may hold its slot against a newcomer from an
    /// address holding as many: time to finish a handshake on a busy server.
    pub evict_after: Duration,
    /// Agent connections open at once with one node certificate (the live one plus one that is
    /// replacing it).
    pub max_connections_per_node: usize,
    /// How long a connection may stay unauthenticated: TLS handshake plus an agent's Hello or
    /// an HTTP client's requests without a token.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_unauthenticated: 2_048,
            max_unauthenticated_per_address: 2_048,
            evict_after: Duration::from_secs(3),
            max_connections_per_node: 2,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyUnauthenticated,
    TooManyFromAddress,
    TooManyForNode,
}

impl Refusal {
    /// The label of `drover_connections_refused_total`.
    pub fn metric(self) -> &'static str {
        match self {
            Refusal::TooManyUnauthenticated => "unauthenticated_cap",
            Refusal::TooManyFromAddress => "address_cap",
            Refusal::TooManyForNode => "node_cap",
        }
    }
}

/// One unauthenticated connection: its source, how to evict it, when it was admitted.
type Slot = (IpAddr, CancellationToken, Instant);

#[derive(Default)]
struct Counts {
    unauthenticated: usize,
    per_address: HashMap<IpAddr, usize>,
    per_node: HashMap<NodeId, usize>,
    /// Unauthenticated connections still waiting for the peer's ClientHello, by age
    /// (admission order), to evict the oldest.
    by_age: BTreeMap<u64, Slot>,
    /// Those whose ClientHello is in: evicted only from an address holding the most, never for
    /// their age (they wait for our CPU, not for the peer).
    handshaking: BTreeMap<u64, Slot>,
    next_seq: u64,
    evicted: u64,
}

impl Counts {
    /// The connection to evict for a newcomer from `newcomer`, if any may be.
    fn victim(&self, newcomer: IpAddr, now: Instant, evict_after: Duration) -> Option<u64> {
        let mine = self.per_address.get(&newcomer).copied().unwrap_or(0);
        let (hog, held) = self.per_address.iter().max_by_key(|(_, n)| **n)?;
        if *held > mine + 1 {
            let of_hog = |m: &BTreeMap<u64, Slot>| {
                m.iter().find(|(_, (a, ..))| a == hog).map(|(seq, _)| *seq)
            };
            return of_hog(&self.by_age).or_else(|| of_hog(&self.handshaking));
        }
        let stale = |m: &BTreeMap<u64, Slot>, after: Duration| {
            let (seq, (_, _, since)) = m.first_key_value()?;
            (now.saturating_duration_since(*since) >= after).then_some(*seq)
        };
        stale(&self.by_age, evict_after)
    }

    /// When the first connection may be evicted for its age, if any.
    fn first_stale_at(&self, evict_after: Duration) -> Option<Instant> {
        self.by_age
            .first_key_value()
            .map(|(_, (_, _, t))| *t + evict_after)
    }

    fn remove(&mut self, seq: u64) -> Option<Slot> {
        let slot = self
            .by_age
            .remove(&seq)
            .or_else(|| self.handshaking.remove(&seq))?;
        self.release(slot.0);
        Some(slot)
    }

    fn release(&mut self, addr: IpAddr) {
        self.unauthenticated = self.unauthenticated.saturating_sub(1);
        if let Some(n) = self.per_address.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&addr);
            }
        }
    }
}

pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
    /// Notified whenever an unauthenticated slot is freed.
    room: tokio::sync::Notify,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
            room: tokio::sync::Notify::new(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Every update is a counter change completed under the lock: a panic elsewhere cannot
        // leave it half-done, so a poisoned lock is still consistent.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a new connection could be admitted: a slot is free, or the oldest has had
    /// its time and may be evicted (3 s waiting on its peer). The listener waits here before it accepts, so that in a
    /// storm (a fleet reconnecting after a restart) connections wait in the kernel's listen
    /// queue instead of being refused and coming back after a backoff.
    pub async fn wait_for_room(&self) {
        loop {
            let freed = self.room.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let stale_at = {
                let counts = self.lock();
                if counts.unauthenticated < self.limits.max_unauthenticated {
                    return;
                }
                match counts.first_stale_at(self.limits.evict_after) {
                    Some(at) => at,
                    // Every one is in its handshake: room comes as they finish or time out.
                    // (Evicting them for their age was tried: in a reconnect storm of 19,000
                    // agents, handshakes queued behind the CPU for over 6 s, and evicting them
                    // took 130 s instead of 31 s to connect everyone.)
                    None => Instant::now() + self.limits.handshake_timeout,
                }
            };
            if stale_at <= Instant::now() {
                return;
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(stale_at.into()) => {}
            }
        }
    }

    /// Admits a new connection from `addr` as unauthenticated (evicting another when the total
    /// is reached), or says why not.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Unauthenticated, Refusal> {
        self.admit_at(addr, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, addr: IpAddr, now: Instant) -> Result<Unauthenticated, Refusal> {
        let addr = source(addr);
        let mut counts = self.lock();
        // One connection makes room when the total is reached (it never goes past it).
        let victim = if counts.unauthenticated >= self.limits.max_unauthenticated {
            let seq = counts
                .victim(addr, now, self.limits.evict_after)
                .ok_or(Refusal::TooManyUnauthenticated)?;
            Some(seq)
        } else {
            None
        };
        // The address's own cap, counting the room its own oldest may make: nothing is
        // evicted for a newcomer that is refused anyway.
        let mine = counts.per_address.get(&addr).copied().unwrap_or(0);
        let own_victim = victim
            .and_then(|seq| {
                counts
                    .by_age
                    .get(&seq)
                    .or_else(|| counts.handshaking.get(&seq))
            })
            .is_some_and(|(a, ..)| *a == addr);
        if mine - usize::from(own_victim) >= self.limits.max_unauthenticated_per_address {
            return Err(Refusal::TooManyFromAddress);
        }
        if let Some((_, evict, _)) = victim.and_then(|seq| counts.remove(seq)) {
            evict.cancel();
            counts.evicted += 1;
        }
        *counts.per_address.entry(addr).or_insert(0) += 1;
        counts.unauthenticated += 1;
        let seq = counts.next_seq;
        counts.next_seq += 1;
        let evicted = CancellationToken::new();
        counts.by_age.insert(seq, (addr, evicted.clone(), now));
        Ok(Unauthenticated {
            admission: self.clone(),
            seq: AtomicU64::new(seq),
            evicted,
        })
    }

    /// Unauthenticated connections evicted so far to make room for newer ones.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// Takes one of `node`'s connection slots, held while its tunnel is open.
    pub fn agent(self: &Arc<Self>, node: &NodeId) -> Result<NodeSlot, Refusal> {
        let mut counts = self.lock();
        let n = counts.per_node.entry(node.clone()).or_insert(0);
        if *n >= self.limits.max_connections_per_node {
            return Err(Refusal::TooManyForNode);
        }
        *n += 1;
        Ok(NodeSlot {
            admission: self.clone(),
            node: node.clone(),
        })
    }

    /// Unauthenticated connections open now (for tests and metrics).
    pub fn unauthenticated(&self) -> usize {
        self.lock().unauthenticated
    }
}

/// The source a per-address cap counts: the address, but for IPv6 its /64 (one host's
/// customary allocation, where it may pick any address it likes).
fn source(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                for o in octets.iter_mut().skip(8) {
                    *o = 0;
                }
                IpAddr::V6(std::net::Ipv6Addr::from(octets))
            }
        },
    }
}

/// Held while a connection is unauthenticated; dropping it frees the slot.
pub struct Unauthenticated {
    admission: Arc<Admission>,
    /// Its key in `by_age` or `handshaking` (a new one each time it waits on the peer again).
    seq: AtomicU64,
    evicted: CancellationToken,
}

impl Unauthenticated {
    /// The connection now waits on the server (its ClientHello or its agent Hello is in): it
    /// is not evicted for its age, since in a reconnect storm it waits for our CPU.
    pub fn waiting_on_us(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        let mut counts = self.admission.lock();
        if let Some(slot) = counts.by_age.remove(&seq) {
            counts.handshaking.insert(seq, slot);
        }
    }

    /// The connection waits on the peer again (TLS is done; its Hello or first request is due):
    /// it has [`Limits::evict_after`] from now before it may be evicted for its age.
    pub fn waiting_on_peer(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        let mut counts = self.admission.lock();
        if let Some((addr, evict, _)) = counts.handshaking.remove(&seq) {
            // A new place in the age order: the map's order is the order of these times.
            let next = counts.next_seq;
            counts.next_seq += 1;
            counts.by_age.insert(next, (addr, evict, Instant::now()));
            self.seq.store(next, Ordering::Relaxed);
            drop(counts);
            // The listener may be waiting for the first of those to go stale.
            self.admission.room.notify_waiters();
        }
    }

    /// Cancelled when the connection is evicted to make room for a newer one: its task must
    /// close it.
    pub fn evicted(&self) -> CancellationToken {
        self.evicted.clone()
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        // An evicted slot was released when it was evicted.
        if counts.remove(*self.seq.get_mut()).is_some() {
            drop(counts);
            self.admission.room.notify_waiters();
        }
    }
}

/// Held while an agent connection of one node is open.
pub struct NodeSlot {
    admission: Arc<Admission>,
    node: NodeId,
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        if let Some(n) = counts.per_node.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                counts.per_node.remove(&self.node);
            }
        }
    }
}

/// The unauthenticated slot of one HTTP connection, shared with its requests: the first
/// request with a valid token releases it.
#[derive(Clone)]
pub struct HttpConnection {
    slot: Arc<Mutex<Option<Unauthenticated>>>,
}

impl HttpConnection {
    pub fn new(slot: Unauthenticated) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(slot))),
        }
    }

    /// Called when a request on this connection authenticated.
    pub fn authenticated(&self) {
        let taken = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken);
    }

    pub fn is_authenticated(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_unauthenticated: 3,
            max_unauthenticated_per_address: 2,
            evict_after: Duration::from_secs(1),
            max_connections_per_node: 1,
            handshake_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn caps_per_address_and_in_total_and_frees_on_drop() {
        let a = Admission::new(limits());
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        let three: IpAddr = "192.0.2.3".parse().unwrap();
        let a1 = a.admit(one).unwrap();
        let _a2 = a.admit(one).unwrap();
        assert_eq!(a.admit(one).err(), Some(Refusal::TooManyFromAddress));
        let b1 = a.admit(two).unwrap();
        // Full: the oldest (a1) of the address holding the most is evicted for the newcomer.
        let evicted = a1.evicted();
        let _c1 = a.admit(three).unwrap();
        assert!(evicted.is_cancelled());
        assert_eq!((a.unauthenticated(), a.evicted()), (3, 1));
        // Dropping the evicted slot later does not free a second one.
        drop(a1);
        assert_eq!(a.unauthenticated(), 3);
        // Its address has room again, once there is room in all: every address now holds one
        // fresh handshake, and none is cut short for it.
        assert_eq!(a.admit(one).err(), Some(Refusal::TooManyUnauthenticated));
        drop(b1);
        let _a3 = a.admit(one).unwrap();
        assert_eq!(a.unauthenticated(), 3);
    }

    #[test]
    fn a_storm_from_one_address_is_refused_rather_than_evicting_fresh_handshakes() {
        let a = Admission::new(Limits {
            max_unauthenticated_per_address: 3,
            ..limits()
        });
        let nat: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let first = a.admit_at(nat, t0).unwrap();
        let second = a.admit_at(nat, t0).unwrap();
        let _third = a.admit_at("192.0.2.2".parse().unwrap(), t0).unwrap();
        // Another from the NAT, which already holds the most: no fresh handshake is cut short.
        let soon = t0 + Duration::from_millis(500);
        assert_eq!(
            a.admit_at(nat, soon).err(),
            Some(Refusal::TooManyUnauthenticated)
        );
        // A newcomer from an address holding less takes the NAT's oldest.
        let _fourth = a.admit_at("192.0.2.3".parse().unwrap(), soon).unwrap();
        assert!(first.evicted().is_cancelled());
        // Once the oldest has had its time, it makes room for anyone.
        let later = t0 + Duration::from_secs(1);
        let _fifth = a.admit_at(nat, later).unwrap();
        assert!(second.evicted().is_cancelled());
        assert_eq!((a.unauthenticated(), a.evicted()), (3, 2));
    }

    #[test]
    fn one_address_holding_every_slot_still_replaces_its_stale_ones() {
        let a = Admission::new(Limits {
            max_unauthenticated_per_address: 3,
            ..limits()
        });
        let nat: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let held: Vec<_> = (0..3).map(|_| a.admit_at(nat, t0).unwrap()).collect();
        assert_eq!(
            a.admit_at(nat, t0).err(),
            Some(Refusal::TooManyUnauthenticated)
        );
        let _next = a.admit_at(nat, t0 + Duration::from_secs(1)).unwrap();
        assert!(held[0].evicted().is_cancelled());
        assert_eq!(a.unauthenticated(), 3);
    }

    #[test]
    fn a_connection_in_its_handshake_is_not_evicted_for_its_age() {
        let a = Admission::new(Limits {
            max_unauthenticated: 2,
            max_unauthenticated_per_address: 2,
            ..limits()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let busy: Vec<_> = (0..2).map(|_| a.admit_at(ip, t0).unwrap()).collect();
        for slot in &busy {
            slot.waiting_on_us();
        }
        // Waiting for our CPU, long past the 1 s a peer gets: kept (the deadline ends it).
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            a.admit_at(ip, later).err(),
            Some(Refusal::TooManyUnauthenticated)
        );
        // Once TLS is done it waits on the peer again, and may be evicted for its age.
        busy[1].waiting_on_peer();
        let _next = a
            .admit_at(ip, Instant::now() + Duration::from_secs(1))
            .unwrap();
        assert!(busy[1].evicted().is_cancelled());
        assert!(!busy[0].evicted().is_cancelled());
        drop(busy);
        assert_eq!(a.unauthenticated(), 1);
    }

    #[tokio::test]
    async fn the_listener_waits_for_room_instead_of_refusing() {
        let a = Admission::new(Limits {
            evict_after: Duration::from_secs(3600),
            ..limits()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = a.admit(ip).unwrap();
        let _others = [
            a.admit(ip).unwrap(),
            a.admit("192.0.2.2".parse().unwrap()).unwrap(),
        ];
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        // A full house whose oldest has had its time does not wait.
        let b = Admission::new(Limits {
            evict_after: Duration::ZERO,
            ..limits()
        });
        let _full = [
            b.admit(ip).unwrap(),
            b.admit(ip).unwrap(),
            b.admit("192.0.2.2".parse().unwrap()).unwrap(),
        ];
        tokio::time::timeout(Duration::from_secs(5), b.wait_for_room())
            .await
            .unwrap();
    }

    #[test]
    fn ipv6_addresses_of_one_64_count_as_one_source() {
        let a = Admission::new(limits());
        let _first = a.admit("2001:db8:0:1::1".parse().unwrap()).unwrap();
        let _second = a.admit("2001:db8:0:1:ffff::2".parse().unwrap()).unwrap();
        assert_eq!(
            a.admit("2001:db8:0:1::3".parse().unwrap()).err(),
            Some(Refusal::TooManyFromAddress)
        );
        assert!(a.admit("2001:db8:0:2::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn an_http_connection_frees_its_slot_when_it_authenticates() {
        let a = Admission::new(limits());
        let conn = HttpConnection::new(a.admit("192.0.2.1".parse().unwrap()).unwrap());
        assert!(!conn.is_authenticated());
        conn.clone().authenticated();
        assert!(conn.is_authenticated());
        assert_eq!(a.unauthenticated(), 0);
    }

    #[test]
    fn caps_connections_per_node() {
        let a = Admission::new(limits());
        let node = NodeId::parse("n-0123456789abcdef0").unwrap();
        let slot = a.agent(&node).unwrap();
        assert_eq!(a.agent(&node).err(), Some(Refusal::TooManyForNode));
        drop(slot);
        assert!(a.agent(&node).is_ok());
    }
}
