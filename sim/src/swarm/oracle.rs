//! The oracle: what must hold once the faults stop and the links heal.
//!
//! It knows every version written (from the write receipts), which were
//! acknowledged (durable at their origin), which may legitimately be gone
//! (never durable, or durable only on a node that was wiped), and where each
//! version should go (the configured links, their directions and filters).
//! Each check names the first broken invariant with node, key and versions.

use super::plan::{Knobs, CLASSES, GROUPS, TENANTS};
use crate::cluster::{node_id, Cluster, SentBatch};
use recsync_engine::vv::VersionVector;
use recsync_engine::{Dot, Event, Key, Version};
use std::collections::{BTreeMap, BTreeSet};

/// The first invariant found broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

fn fail(invariant: &'static str, detail: String) -> Result<(), Failure> {
    Err(Failure { invariant, detail })
}

/// A version the workload wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub origin: usize,
    pub version: Version,
    pub at_ms: u64,
    /// Durable at its origin (the application was told so).
    pub acked: bool,
    /// Durable only on a node that was wiped: it may be gone.
    pub excused: bool,
    /// The nodes it must spread from: its origin until a wipe; after a wipe
    /// of node i, the others that held it durably then, plus the sources
    /// before but i. A wiped origin or relay may have been the only way
    /// some node could get it: a wiped origin whose one inbound link
    /// filters its class out never gets its own write back, rightly. The
    /// same holds for a crash or restart of the origin before the write was
    /// durable there: the origin stops being a source (it gets the write
    /// back only if a holder reaches it).
    pub sources: NodeSet,
}

/// A set of node indexes (a simulated cluster has at most 64 nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeSet(u64);

impl NodeSet {
    pub fn of(i: usize) -> Self {
        let mut s = Self::default();
        s.insert(i);
        s
    }

    pub fn insert(&mut self, i: usize) {
        assert!(i < 64, "node index {i} beyond a NodeSet");
        self.0 |= 1 << i;
    }

    pub fn remove(&mut self, i: usize) {
        if i < 64 {
            self.0 &= !(1 << i);
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }

    /// The members, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..64).filter(|i| self.contains(*i))
    }
}

/// What the oracle knows.
#[derive(Default)]
pub struct Model {
    pub written: BTreeMap<Dot, Written>,
    /// The dots written per key.
    pub by_key: BTreeMap<Key, Vec<Dot>>,
    /// Directed links and what each never carries.
    pub links: BTreeMap<(usize, usize), LinkFilter>,
    pub nodes: usize,
    /// Per node, what its purged tombstones had seen, by key (from its
    /// `TombstonesPurged` events): a purged key's versions count as seen
    /// there, as the tombstone that superseded them did.
    pub purged: Vec<BTreeMap<Key, VersionVector>>,
    /// Every purged tombstone's dot.
    pub purged_dots: BTreeSet<Dot>,
    /// Events of each node already looked at for purges.
    scanned: Vec<usize>,
}

/// Where a version may go: its class, tenant and group as indexes
/// (`u8::MAX` for a name the workload does not filter on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub class: u8,
    pub tenant: u8,
    pub group: u8,
}

impl Route {
    pub fn of(labels: &recsync_engine::Labels) -> Self {
        let idx = |name: &str, prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|n| n.parse::<u8>().ok())
                .unwrap_or(u8::MAX)
        };
        Route {
            class: CLASSES
                .iter()
                .position(|c| *c == labels.class.as_str())
                .map_or(u8::MAX, |i| i as u8),
            tenant: idx(labels.tenant.as_str(), "t"),
            group: idx(labels.group.as_str(), "g"),
        }
    }
}

/// What one link never carries (a class, a tenant, a group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkFilter {
    pub class: Option<u8>,
    pub tenant: Option<u8>,
    pub group: Option<u8>,
}

impl LinkFilter {
    pub fn passes(&self, r: Route) -> bool {
        self.class != Some(r.class) && self.tenant != Some(r.tenant) && self.group != Some(r.group)
    }
}

/// The labels of a workload key: its class, tenant `t<key % 3>` and group
/// `g<key / 3 % 3>`.
pub fn labels_of(key: u32) -> recsync_engine::Labels {
    let class = CLASSES[class_of(key)];
    let tenant = format!("t{}", key % TENANTS as u32);
    let group = format!("g{}", (key / TENANTS as u32) % GROUPS as u32);
    match recsync_engine::Labels::parse(class, &tenant, &group) {
        Ok(l) => l,
        Err(e) => panic!("workload labels {class}/{tenant}/{group}: {e}"),
    }
}

/// The class index of a key of the workload.
pub fn class_of(key: u32) -> usize {
    if key & 0x1_0000 != 0 {
        3
    } else {
        [0, 1, 2, 4][(key % 4) as usize]
    }
}

pub fn key_of(key: u32) -> Key {
    Key::from_u128(0x5157_0000_0000 + key as u128)
}

/// A dot as traces print it: the last 8 hex digits of its replica (as
/// `ReplicaId`'s `Debug` does) and the counter.
pub fn short(d: &Dot) -> String {
    let r = d.replica.0.simple().to_string();
    format!("{}#{}", &r[r.len() - 8..], d.counter)
}

impl Model {
    pub fn new(knobs: &Knobs) -> Self {
        Self {
            written: BTreeMap::new(),
            by_key: BTreeMap::new(),
            links: knobs
                .links
                .iter()
                .map(|l| {
                    (
                        (l.from, l.to),
                        LinkFilter {
                            class: l.exclude_class,
                            tenant: l.exclude_tenant,
                            group: l.exclude_group,
                        },
                    )
                })
                .collect(),
            nodes: knobs.nodes,
            purged: vec![BTreeMap::new(); knobs.nodes],
            purged_dots: BTreeSet::new(),
            scanned: vec![0; knobs.nodes],
        }
    }

    /// Takes the purges the nodes reported since the last call.
    pub fn note_purges(&mut self, c: &Cluster) {
        for j in 0..c.len().min(self.scanned.len()) {
            let events = c.events(j);
            for e in &events[self.scanned[j].min(events.len())..] {
                let Event::TombstonesPurged { keys } = e else {
                    continue;
                };
                for (key, dot) in keys {
                    let mut seen = self
                        .written
                        .get(dot)
                        .map(|w| w.version.context.clone())
                        .unwrap_or_default();
                    seen.add(dot);
                    self.purged[j].entry(*key).or_default().join(&seen);
                    self.purged_dots.insert(*dot);
                }
            }
            self.scanned[j] = events.len();
        }
    }

    /// Whether node `j` (up) has seen `dot` of `key`: its state has, or a
    /// tombstone it purged had.
    fn seen_by(&self, c: &Cluster, j: usize, key: &Key, dot: &Dot) -> bool {
        c.is_up(j)
            && (c.node(j).key_state(key).is_some_and(|s| s.has_seen(dot))
                || self
                    .purged
                    .get(j)
                    .and_then(|p| p.get(key))
                    .is_some_and(|seen| seen.covers(dot)))
    }

    /// Node `j`'s frontier of `key`; a lone tombstone that some node purged
    /// counts as no frontier (what the nodes that purged it hold).
    fn frontier(&self, c: &Cluster, j: usize, key: &Key) -> Vec<Dot> {
        let Some(st) = c.node(j).key_state(key) else {
            return Vec::new();
        };
        if let [s] = st.siblings.as_slice() {
            if s.version.body.is_tombstone() && self.purged_dots.contains(&s.version.dot) {
                return Vec::new();
            }
        }
        st.siblings.iter().map(|s| s.version.dot).collect()
    }

    /// Records a new version; a dot seen before is a reuse.
    pub fn record(&mut self, origin: usize, version: Version, at_ms: u64) -> Result<(), Failure> {
        if let Some(old) = self.written.get(&version.dot) {
            return fail(
                "no dot reused",
                format!(
                    "node {origin} wrote {} for key {}, already used by node {} for key {}",
                    short(&version.dot),
                    version.key,
                    old.origin,
                    old.version.key
                ),
            );
        }
        self.by_key
            .entry(version.key)
            .or_default()
            .push(version.dot);
        self.written.insert(
            version.dot,
            Written {
                origin,
                version,
                at_ms,
                acked: false,
                excused: false,
                sources: NodeSet::of(origin),
            },
        );
        Ok(())
    }

    /// The nodes a version with labels `route` held at `starts` must reach.
    pub fn reach(&self, starts: impl IntoIterator<Item = usize>, route: Route) -> BTreeSet<usize> {
        let mut seen: BTreeSet<usize> = starts.into_iter().collect();
        let mut todo: Vec<usize> = seen.iter().copied().collect();
        while let Some(a) = todo.pop() {
            for (&(from, to), f) in &self.links {
                if from == a && f.passes(route) && seen.insert(to) {
                    todo.push(to);
                }
            }
        }
        seen
    }

    fn class_of_version(v: &Version) -> Route {
        Route::of(&v.labels)
    }

    /// The nodes a version must reach: from its sources and from every node
    /// that holds it now, along the links that carry its class.
    fn targets(&self, c: &Cluster, dot: &Dot, w: &Written) -> BTreeSet<usize> {
        let holders = (0..c.len()).filter(|i| self.seen_by(c, *i, &w.version.key, dot));
        let from = w.sources.iter().chain(holders);
        self.reach(from, Self::class_of_version(&w.version))
    }

    /// Versions that must exist: acknowledged and not excused, plus any
    /// version some node holds.
    fn must_exist(&self, c: &Cluster, dot: &Dot, w: &Written) -> bool {
        (w.acked && !w.excused) || (0..c.len()).any(|i| self.seen_by(c, i, &w.version.key, dot))
    }

    /// The first version not yet everywhere it should be.
    pub fn missing(&self, c: &Cluster) -> Option<String> {
        for (dot, w) in &self.written {
            if !self.must_exist(c, dot, w) {
                continue;
            }
            for j in self.targets(c, dot, w) {
                if !self.seen_by(c, j, &w.version.key, dot) {
                    let holders: Vec<usize> = (0..c.len())
                        .filter(|i| self.seen_by(c, *i, &w.version.key, dot))
                        .collect();
                    return Some(format!(
                        "node {j} lacks {} of key {} (written on node {} at {} ms, acked {}; \
                         held by nodes {holders:?})",
                        short(dot),
                        w.version.key,
                        w.origin,
                        w.at_ms,
                        w.acked
                    ));
                }
            }
        }
        None
    }

    /// Every check, once the cluster has settled.
    pub fn check(&self, c: &Cluster) -> Result<(), Failure> {
        self.check_sent(&c.sent)?;
        // No acknowledged write lost, and liveness: everything that must
        // exist reached every node it should.
        for (dot, w) in &self.written {
            if w.acked
                && !w.excused
                && !(0..c.len()).any(|i| self.seen_by(c, i, &w.version.key, dot))
            {
                return fail(
                    "no acknowledged write lost",
                    format!(
                        "{} of key {} (node {}, {} ms) is on no node",
                        short(dot),
                        w.version.key,
                        w.origin,
                        w.at_ms
                    ),
                );
            }
        }
        if let Some(m) = self.missing(c) {
            return fail("everything replicated after the heal", m);
        }
        for j in 0..c.len() {
            self.check_node(c, j)?;
        }
        self.check_convergence(c)
    }

    /// Filters and directions: nothing crossed a link it must not.
    fn check_sent(&self, sent: &[SentBatch]) -> Result<(), Failure> {
        for b in sent {
            let Some(filter) = self.links.get(&(b.from, b.to)) else {
                return fail(
                    "directions respected",
                    format!(
                        "node {} sent a batch to node {}, which it does not send to",
                        b.from, b.to
                    ),
                );
            };
            for (key, dot, labels) in &b.versions {
                if !filter.passes(Route::of(labels)) {
                    return fail(
                        "filters respected",
                        format!(
                            "node {} sent {} of key {} ({}/{}/{}) to node {}, whose filter excludes it",
                            b.from,
                            short(dot),
                            key,
                            labels.class.as_str(),
                            labels.tenant.as_str(),
                            labels.group.as_str(),
                            b.to
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Per node: no resurrection, conflicts reported, dots name one version.
    fn check_node(&self, c: &Cluster, j: usize) -> Result<(), Failure> {
        let node = c.node(j);
        for (key, st) in node.keys() {
            for s in &st.siblings {
                let v = &s.version;
                match self.written.get(&v.dot) {
                    Some(w) if w.version != *v => {
                        return fail(
                            "no dot reused",
                            format!(
                                "node {j} holds {} of key {key} with other content than written on node {}",
                                short(&v.dot),
                                w.origin
                            ),
                        )
                    }
                    None => {
                        return fail(
                            "no dot reused",
                            format!("node {j} holds {} of key {key}, which nobody wrote", short(&v.dot)),
                        )
                    }
                    Some(_) => {}
                }
                // Resurrection: a standing version superseded by one this
                // node has seen.
                for d in self.by_key.get(key).into_iter().flatten() {
                    let Some(w) = self.written.get(d) else {
                        continue;
                    };
                    if *d != v.dot && w.version.context.covers(&v.dot) && self.seen_by(c, j, key, d)
                    {
                        return fail(
                            "no resurrection",
                            format!(
                                "node {j}: {} of key {key} stands although {} (seen here) supersedes it",
                                short(&v.dot),
                                short(d)
                            ),
                        );
                    }
                }
            }
            if st.siblings.len() > 1 {
                let standing: BTreeSet<Dot> = st.siblings.iter().map(|s| s.version.dot).collect();
                let reported = c.events(j).iter().any(|e| match e {
                    Event::Conflict(r) if r.key == *key => {
                        let in_report: BTreeSet<Dot> = r.versions.iter().map(|v| v.dot).collect();
                        standing.is_subset(&in_report)
                    }
                    _ => false,
                });
                if !reported {
                    return fail(
                        "every conflict reported",
                        format!(
                            "node {j}: key {key} has concurrent versions {:?} but no conflict event named them all",
                            standing.iter().map(short).collect::<Vec<_>>()
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Nodes that should hold the same versions of a key hold the same
    /// frontier.
    fn check_convergence(&self, c: &Cluster) -> Result<(), Failure> {
        for (key, dots) in &self.by_key {
            let key = *key;
            let versions: Vec<(&Dot, &Written)> = dots
                .iter()
                .filter_map(|d| self.written.get_key_value(d))
                .collect();
            // Which nodes should have which of the key's versions.
            let mut expect: Vec<BTreeSet<Dot>> = vec![BTreeSet::new(); c.len()];
            for (d, w) in &versions {
                if !self.must_exist(c, d, w) {
                    continue;
                }
                for j in self.targets(c, d, w) {
                    expect[j].insert(**d);
                }
            }
            for a in 0..c.len() {
                for b in a + 1..c.len() {
                    if expect[a] != expect[b] || expect[a].is_empty() {
                        continue;
                    }
                    let fa = self.frontier(c, a, &key);
                    let fb = self.frontier(c, b, &key);
                    if fa != fb {
                        return fail(
                            "convergence",
                            format!(
                                "key {key}: node {a} holds {:?}, node {b} holds {:?}",
                                fa.iter().map(short).collect::<Vec<_>>(),
                                fb.iter().map(short).collect::<Vec<_>>()
                            ),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Used by the runner: the node ids of a cluster, for messages.
pub fn name(i: usize) -> String {
    format!("node {i} ({})", node_id(i))
}
