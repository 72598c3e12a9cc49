//! The simulated network: connections between node pairs, packets in
//! flight with latency, optional reordering, drops and duplicates, an
//! optional WAN bandwidth per link direction, and directed partitions. Deterministic given its seed.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

/// Network behaviour knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    pub latency_ms_min: u64,
    pub latency_ms_max: u64,
    /// Deliver packets of one connection out of order (latency decides).
    pub reorder: bool,
    /// Probability a packet is lost (the protocol retries after a timeout).
    pub drop_probability: f64,
    /// Probability a packet is delivered twice.
    pub duplicate_probability: f64,
    /// A slow WAN: each direction of each link carries this many bytes per
    /// second, so frames queue behind each other before their latency.
    pub wan_bytes_per_s: Option<u64>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            latency_ms_min: 1,
            latency_ms_max: 5,
            reorder: false,
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            wan_bytes_per_s: None,
        }
    }
}

/// One frame on its way.
#[derive(Clone, Debug)]
pub struct Packet {
    pub from: usize,
    pub to: usize,
    pub generation: u64,
    pub frame: Vec<u8>,
}

/// Connections and packets.
#[derive(Debug)]
pub struct Network {
    pub cfg: NetConfig,
    /// Open connections by unordered pair, with their generation.
    conns: BTreeMap<(usize, usize), u64>,
    next_generation: u64,
    /// Directed links that cannot carry traffic.
    blocked: BTreeSet<(usize, usize)>,
    /// Packets by (delivery time, sequence).
    queue: BTreeMap<(u64, u64), Packet>,
    seq: u64,
    /// Last delivery time per directed connection (for FIFO delivery).
    last_delivery: BTreeMap<(usize, usize), u64>,
    /// With a WAN cap: when each direction finishes sending what it has
    /// queued, in microseconds.
    busy_until_us: BTreeMap<(usize, usize), u64>,
    pub packets_dropped: u64,
    pub packets_duplicated: u64,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Network {
    pub fn new(cfg: NetConfig) -> Self {
        Self {
            cfg,
            conns: BTreeMap::new(),
            next_generation: 1,
            blocked: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            last_delivery: BTreeMap::new(),
            busy_until_us: BTreeMap::new(),
            packets_dropped: 0,
            packets_duplicated: 0,
        }
    }

    pub fn is_connected(&self, a: usize, b: usize) -> bool {
        self.conns.contains_key(&pair(a, b))
    }

    /// Whether a connection between `a` and `b` can be made.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a))
    }

    /// Opens a connection; returns false when it already existed.
    pub fn connect(&mut self, a: usize, b: usize) -> bool {
        if self.is_connected(a, b) {
            return false;
        }
        self.conns.insert(pair(a, b), self.next_generation);
        self.next_generation += 1;
        true
    }

    /// Closes a connection and loses what was in flight on it. Returns
    /// whether it was open.
    pub fn disconnect(&mut self, a: usize, b: usize) -> bool {
        let Some(generation) = self.conns.remove(&pair(a, b)) else {
            return false;
        };
        self.queue.retain(|_, p| p.generation != generation);
        true
    }

    /// The open connections touching `n`.
    pub fn connections_of(&self, n: usize) -> Vec<usize> {
        self.conns
            .keys()
            .filter_map(|&(a, b)| {
                if a == n {
                    Some(b)
                } else if b == n {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    pub fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    pub fn unblock_all(&mut self) {
        self.blocked.clear();
    }

    /// Sends a frame on the open connection between `from` and `to`.
    pub fn send(
        &mut self,
        rng: &mut ChaCha8Rng,
        now_ms: u64,
        from: usize,
        to: usize,
        frame: Vec<u8>,
    ) {
        let Some(&generation) = self.conns.get(&pair(from, to)) else {
            return;
        };
        if self.cfg.drop_probability > 0.0 && rng.gen_bool(self.cfg.drop_probability) {
            self.packets_dropped += 1;
            return;
        }
        let copies = if self.cfg.duplicate_probability > 0.0
            && rng.gen_bool(self.cfg.duplicate_probability)
        {
            self.packets_duplicated += 1;
            2
        } else {
            1
        };
        // On a capped link the frame leaves once the frames before it have.
        let sent_ms = match self.cfg.wan_bytes_per_s {
            Some(bw) if bw > 0 => {
                let busy = self.busy_until_us.entry((from, to)).or_insert(0);
                let start = (*busy).max(now_ms * 1000);
                *busy = start + frame.len() as u64 * 1_000_000 / bw;
                busy.div_ceil(1000)
            }
            _ => now_ms,
        };
        for _ in 0..copies {
            let latency = rng.gen_range(self.cfg.latency_ms_min..=self.cfg.latency_ms_max);
            let mut at = sent_ms + latency;
            if !self.cfg.reorder {
                let last = self.last_delivery.entry((from, to)).or_insert(0);
                at = at.max(*last);
                *last = at;
            }
            self.seq += 1;
            self.queue.insert(
                (at, self.seq),
                Packet {
                    from,
                    to,
                    generation,
                    frame: frame.clone(),
                },
            );
        }
    }

    /// When the next packet is due.
    pub fn next_delivery_ms(&self) -> Option<u64> {
        self.queue.keys().next().map(|(t, _)| *t)
    }

    /// Takes the next packet due at or before `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<Packet> {
        let (&(t, s), _) = self.queue.iter().next()?;
        if t > now_ms {
            return None;
        }
        self.queue.remove(&(t, s))
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}
