//! Instances that serve more than one request: one after another (a
//! deployment that opted in to reuse) or several at once (a WASIp3
//! deployment with `max_instance_concurrency` above 1). One mechanism for
//! both, whatever the ABI: which instance a request goes to, what each
//! instance holds on the node, when it is kept and when it ends.
//!
//! A deployment version's instances are its [`Kept`] set. Each instance
//! (a member) is in one of three states:
//! - **serving**: it has requests in flight, and holds one place in the
//!   node's instance pool (a [`Slot`]) however many: the pool's size, the
//!   tenant's `max_concurrency` and its fair share count instances;
//! - **idle**: no request in flight; it holds a place among the node's idle
//!   instances (an [`IdleClaim`]: at most `POOL_WARM_SLOTS` of them and
//!   `REUSE_IDLE_MEMORY` of linear memory in all), not a pool place; it
//!   ends after `REUSE_IDLE_TIMEOUT`, or when its memory has outgrown its
//!   tier's current limit;
//! - **closed**: it takes no more requests (used up, failed, no idle place
//!   for it, idle too long); it keeps its pool place until it has ended.
//!
//! A request goes to a serving instance with room (WASIp3 only: a WASIp2
//! instance serves one at a time), else to the newest idle one (warmest
//! caches), taking a pool place for it again, else to a new instance,
//! taking a pool place for that. An instance that ended its request badly
//! (trapped, timed out, ran out of memory) is closed.
//!
//! What a request gets of its instance is the instance's [`Handle`]: the
//! instance itself for WASIp2 (taken while the request runs on it, given
//! back after), a way to send it work for WASIp3 (its task owns the store;
//! the handle is shared). Pure bookkeeping: nothing here touches wasmtime,
//! so the state machine is tested on its own (`tests` below).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::runtime::slots::{Refusal, Slot};

/// Idle instances one deployment keeps at most.
pub const MAX_IDLE_PER_DEPLOYMENT: usize = 32;

/// Second requests of WASIp2 instances returning without an answer, in a
/// row, none reused having answered well, after which a deployment's
/// instances are no longer kept on this node.
pub const FAILURES_BEFORE_GIVING_UP: u32 = 2;

/// What a request gets of the instance it runs on.
pub trait Handle: Send + 'static {
    /// Whether the handle is the instance itself, taken by one request at a
    /// time (WASIp2): dropping it ends the instance. Otherwise (WASIp3) it
    /// is shared by the requests in flight, and the instance ends when its
    /// own task says so ([`Kept::ended`]).
    const EXCLUSIVE: bool;

    /// A handle for one more request, from the one the set holds: taken
    /// when exclusive, a copy otherwise.
    fn lend(held: &mut Option<Self>) -> Option<Self>
    where
        Self: Sized;
}

/// How many instances are idle on this node and how much linear memory
/// they hold, against the most the node may keep.
#[derive(Debug)]
pub struct IdleCount {
    now: AtomicUsize,
    max: usize,
    bytes: AtomicU64,
    max_bytes: u64,
}

impl IdleCount {
    /// At most `max` idle instances holding `max_bytes` in all.
    pub fn new(max: usize, max_bytes: u64) -> Self {
        Self { now: AtomicUsize::new(0), max, bytes: AtomicU64::new(0), max_bytes }
    }

    /// Idle instances now.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// One more idle instance holding `bytes` of linear memory, if the node
    /// may keep it.
    pub fn claim(self: &Arc<Self>, bytes: u64) -> Option<IdleClaim> {
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()?;
        let fits = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |held| {
            held.checked_add(bytes).filter(|total| *total <= self.max_bytes)
        });
        if fits.is_err() {
            self.now.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(IdleClaim { count: self.clone(), bytes })
    }
}

/// One idle instance counted on the node; uncounted on drop.
#[derive(Debug)]
pub struct IdleClaim {
    count: Arc<IdleCount>,
    bytes: u64,
}

impl Drop for IdleClaim {
    fn drop(&mut self) {
        self.count.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.count.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Identifies an instance of a set.
pub type MemberId = u64;

struct Member<H> {
    id: MemberId,
    /// Requests admitted in all.
    accepted: u32,
    /// Requests admitted and not finished.
    in_flight: u32,
    closed: bool,
    /// While serving (and, once closed, until it has ended).
    slot: Option<Slot>,
    /// While idle, and since when.
    idle: Option<(IdleClaim, Instant)>,
    /// Its linear memory at its last request's end.
    memory: u64,
    /// What requests get of it (an exclusive one: only while idle).
    handle: Option<H>,
    /// It never started (made for a request that was then refused).
    started: bool,
}

impl<H> Member<H> {
    fn has_room(&self, max_uses: u32, max_concurrent: u32) -> bool {
        !self.closed && self.accepted < max_uses && self.in_flight < max_concurrent
    }
}

/// Where a request was admitted.
#[derive(Debug)]
pub enum Admitted<H> {
    /// An instance that served before (serving now, or idle until now).
    Existing {
        /// The instance.
        id: MemberId,
        /// What the request runs on.
        handle: H,
        /// Requests it had accepted before this one.
        served: u32,
    },
    /// A new instance, which the caller makes (and marks
    /// [`Kept::started`] once it runs).
    New {
        /// The instance.
        id: MemberId,
        /// What the request runs on, for a shared one (an exclusive one
        /// the caller makes for itself).
        handle: Option<H>,
    },
}

/// What a set lets go of, dropped in order: the instance first, then its
/// pool place (the pooling allocator has room for every running instance
/// plus the idle ones, so a place is free only once its instance is gone).
#[must_use = "dropped outside the set's lock, where dropping a store is fine"]
#[derive(Debug)]
pub struct Released<H> {
    handles: Vec<H>,
    slots: Vec<Slot>,
    _idle: Vec<IdleClaim>,
}

impl<H> Default for Released<H> {
    fn default() -> Self {
        Self { handles: Vec::new(), slots: Vec::new(), _idle: Vec::new() }
    }
}

impl<H> Released<H> {
    fn take(&mut self, member: Member<H>) {
        self.handles.extend(member.handle);
        self.slots.extend(member.slot);
        if let Some((claim, _)) = member.idle {
            self._idle.push(claim);
        }
    }

    /// Whether nothing was let go of.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty() && self.slots.is_empty() && self._idle.is_empty()
    }
}

impl<H> Drop for Released<H> {
    fn drop(&mut self) {
        self.handles.clear();
        self.slots.clear();
    }
}

/// The instances of one deployment version that serve more than one
/// request each.
pub struct Kept<H: Handle> {
    /// The deployment's route, in logs.
    name: String,
    max_uses: u32,
    max_concurrent: u32,
    members: Mutex<Vec<Member<H>>>,
    idle: Arc<IdleCount>,
    next_id: AtomicU64,
    /// Whether a request on a reused instance has ever ended well.
    worked: AtomicBool,
    /// Requests on reused instances that failed while none had ended well.
    failed: AtomicU32,
    /// Set when reuse failed [`FAILURES_BEFORE_GIVING_UP`] times and never
    /// worked: no instance is kept any more.
    given_up: AtomicBool,
}

impl<H: Handle> std::fmt::Debug for Kept<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("name", &self.name)
            .field("max_uses", &self.max_uses)
            .field("max_concurrent", &self.max_concurrent)
            .field("members", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl<H: Handle> Kept<H> {
    /// Instances serving up to `max_uses` requests each, `max_concurrent`
    /// at once (1: one after another), idle ones counted in `idle`.
    pub fn new(name: String, max_uses: u32, max_concurrent: u32, idle: Arc<IdleCount>) -> Self {
        let max_uses = max_uses.max(1);
        Self {
            name,
            max_uses,
            max_concurrent: max_concurrent.clamp(1, max_uses),
            members: Mutex::new(Vec::new()),
            idle,
            next_id: AtomicU64::new(0),
            worked: AtomicBool::new(false),
            failed: AtomicU32::new(0),
            given_up: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Member<H>>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The deployment's route.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether instances are still kept (not given up on).
    pub fn keeping(&self) -> bool {
        !self.given_up.load(Ordering::Relaxed)
    }

    /// Instances of the set now (serving, idle or closed and ending).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the set has no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a request: to a serving instance with room, else to the
    /// newest idle one whose memory fits in `memory_limit` (taking a pool
    /// place with `reserve`), else to a new instance (taking one for it;
    /// `make` gives what later requests get of it, `None` for an exclusive
    /// one, which the request gives back at its end). Idle instances that
    /// outgrew the limit are closed and returned for dropping. A refusal of
    /// `reserve` refuses the request.
    pub fn admit(
        &self,
        memory_limit: u64,
        reserve: &dyn Fn() -> Result<Slot, Refusal>,
        make: &mut dyn FnMut() -> Option<H>,
    ) -> Result<(Admitted<H>, Released<H>), Refusal> {
        let mut released = Released::default();
        let mut members = self.lock();
        let (max_uses, max_concurrent) = (self.max_uses, self.max_concurrent);
        // A serving instance with room: no pool place of its own.
        if let Some(m) =
            members.iter_mut().find(|m| m.slot.is_some() && m.has_room(max_uses, max_concurrent))
            && let Some(handle) = H::lend(&mut m.handle)
        {
            m.accepted += 1;
            m.in_flight += 1;
            return Ok((Admitted::Existing { id: m.id, handle, served: m.accepted - 1 }, released));
        }
        // The newest idle one that still fits: it needs a pool place again.
        let mut i = members.len();
        while i > 0 {
            i -= 1;
            let m = &members[i];
            if m.idle.is_none() || m.closed {
                continue;
            }
            if m.memory > memory_limit {
                released.take(members.remove(i));
                continue;
            }
            let slot = reserve()?;
            let m = &mut members[i];
            let Some(handle) = H::lend(&mut m.handle) else { continue };
            m.slot = Some(slot);
            m.idle = None;
            m.accepted += 1;
            m.in_flight += 1;
            return Ok((Admitted::Existing { id: m.id, handle, served: m.accepted - 1 }, released));
        }
        let slot = reserve()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut member = Member {
            id,
            accepted: 1,
            in_flight: 1,
            closed: false,
            slot: Some(slot),
            idle: None,
            memory: 0,
            handle: make(),
            started: false,
        };
        let handle = H::lend(&mut member.handle);
        if H::EXCLUSIVE {
            member.handle = None;
        }
        members.push(member);
        Ok((Admitted::New { id, handle }, released))
    }

    /// The instance made for an [`Admitted::New`] runs: a request that was
    /// admitted to it and then refused no longer makes it forgotten.
    pub fn started(&self, id: MemberId) {
        if let Some(m) = self.lock().iter_mut().find(|m| m.id == id) {
            m.started = true;
        }
    }

    /// A request admitted to `id` was never sent to it (its quota refused
    /// it); an exclusive handle comes back with it. Returns whether other
    /// requests are admitted to the instance (one not started yet must
    /// then be started for them). An instance made for this request alone
    /// is forgotten (it never starts).
    pub fn give_back(&self, id: MemberId, handle: Option<H>) -> (bool, Released<H>) {
        let mut released = Released::default();
        let mut members = self.lock();
        let Some(i) = members.iter().position(|m| m.id == id) else {
            return (false, released);
        };
        let m = &mut members[i];
        m.accepted = m.accepted.saturating_sub(1);
        m.in_flight = m.in_flight.saturating_sub(1);
        if handle.is_some() {
            m.handle = handle;
        }
        let others = m.in_flight > 0;
        if !others {
            if !m.started {
                released.take(members.remove(i));
            } else {
                self.settle(&mut members, i, &mut released);
            }
        }
        (others, released)
    }

    /// A request on `id` ended: `ok` or not (not: the instance is closed),
    /// the instance holding `memory` bytes of linear memory, an exclusive
    /// handle given back with `handle` (`None`: the instance is gone, or
    /// may not serve another). Returns whether the instance takes more
    /// requests, and what the set let go of.
    pub fn finished(
        &self,
        id: MemberId,
        ok: bool,
        memory: u64,
        handle: Option<H>,
    ) -> (bool, Released<H>) {
        let mut released = Released::default();
        let mut members = self.lock();
        let Some(i) = members.iter().position(|m| m.id == id) else {
            // Gone already (swept): whatever came back goes too.
            released.handles.extend(handle);
            return (false, released);
        };
        let m = &mut members[i];
        m.in_flight = m.in_flight.saturating_sub(1);
        m.memory = memory;
        if !ok || (H::EXCLUSIVE && handle.is_none()) {
            m.closed = true;
        }
        if handle.is_some() {
            m.handle = handle;
        }
        self.settle(&mut members, i, &mut released);
        let open = members.get(i).is_some_and(|m| m.id == id && !m.closed);
        (open, released)
    }

    /// After a request left member `i`: with none left in flight, it goes
    /// idle if it may, else closes; a closed exclusive one without
    /// requests ends here (its handle is the instance).
    fn settle(&self, members: &mut Vec<Member<H>>, i: usize, released: &mut Released<H>) {
        let m = &mut members[i];
        if m.in_flight > 0 {
            return;
        }
        if !m.closed {
            let kept = m.accepted < self.max_uses
                && self.keeping()
                && members.iter().filter(|m| m.idle.is_some()).count() < MAX_IDLE_PER_DEPLOYMENT;
            let m = &mut members[i];
            match kept.then(|| self.idle.claim(m.memory)).flatten() {
                Some(claim) => {
                    m.idle = Some((claim, Instant::now()));
                    m.slot = None;
                    tracing::debug!(served = m.accepted, "instance kept for reuse");
                }
                None => m.closed = true,
            }
        }
        let m = &members[i];
        if m.closed && (H::EXCLUSIVE || !m.started) {
            released.take(members.remove(i));
        } else if m.closed {
            // Its task ends it ([`Kept::ended`]); nothing sends to it now.
            let m = &mut members[i];
            released.handles.extend(m.handle.take());
        }
    }

    /// Takes no more requests on `id` (its instance failed).
    pub fn close(&self, id: MemberId) {
        if let Some(m) = self.lock().iter_mut().find(|m| m.id == id) {
            m.closed = true;
        }
    }

    /// The instance `id` has ended (a shared instance's task is over): it
    /// leaves the set, and its pool place is free.
    pub fn ended(&self, id: MemberId) -> Released<H> {
        let mut released = Released::default();
        let mut members = self.lock();
        if let Some(i) = members.iter().position(|m| m.id == id) {
            released.take(members.remove(i));
        }
        released
    }

    /// Closes the instances idle since before `now - timeout` and returns
    /// them (dropping a store resets pool slots: the caller drops them off
    /// any request's thread).
    pub fn sweep(&self, now: Instant, timeout: Duration) -> Released<H> {
        let mut released = Released::default();
        let mut members = self.lock();
        let mut i = 0;
        while i < members.len() {
            let expired = members[i]
                .idle
                .as_ref()
                .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= timeout);
            if expired {
                released.take(members.remove(i));
            } else {
                i += 1;
            }
        }
        released
    }

    /// Notes how a request on a reused WASIp2 instance ended: `ok`, or
    /// returned without an answer (`unanswered`) on the instance's `second`
    /// request. A deployment whose instances do that
    /// [`FAILURES_BEFORE_GIVING_UP`] times in a row, before any reused
    /// instance has answered well, is given up on: its idle instances are
    /// returned for dropping, and none is kept again.
    pub fn reused_instance_ended(&self, ok: bool, unanswered: bool, second: bool) -> Released<H> {
        if ok {
            self.worked.store(true, Ordering::Relaxed);
            self.failed.store(0, Ordering::Relaxed);
            return Released::default();
        }
        if !unanswered || !second || self.worked.load(Ordering::Relaxed) {
            return Released::default();
        }
        let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if failed != FAILURES_BEFORE_GIVING_UP {
            return Released::default();
        }
        self.given_up.store(true, Ordering::Relaxed);
        tracing::warn!(
            route = %self.name,
            failed,
            "instance reuse turned off for this deployment on this node: its instances \
             returned without an answer on their second request every time (a JavaScript \
             component answering through the fetch event cannot serve two requests); its \
             requests run on fresh instances until it is deployed again"
        );
        let mut released = Released::default();
        let mut members = self.lock();
        let mut i = 0;
        while i < members.len() {
            if members[i].idle.is_some() {
                released.take(members.remove(i));
            } else {
                i += 1;
            }
        }
        released
    }
}

/// Every set on the node, for the sweep of idle instances.
#[derive(Default)]
pub struct Sweeper(Mutex<Vec<Box<dyn Sweep>>>);

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper").finish_non_exhaustive()
    }
}

/// A set the sweeper visits, while it lives.
pub trait Sweep: Send {
    /// Drops what was idle too long; false once the set is gone.
    fn sweep(&self, now: Instant, timeout: Duration) -> bool;
}

impl<H: Handle> Sweep for Weak<Kept<H>> {
    fn sweep(&self, now: Instant, timeout: Duration) -> bool {
        let Some(kept) = self.upgrade() else { return false };
        let released = kept.sweep(now, timeout);
        if !released.is_empty() {
            tracing::debug!(route = %kept.name, "idle instances dropped after REUSE_IDLE_TIMEOUT");
        }
        true
    }
}

impl Sweeper {
    /// Visits `kept` at every sweep, until it is dropped.
    pub fn register<H: Handle>(&self, kept: &Arc<Kept<H>>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(Box::new(Arc::downgrade(kept)));
    }

    /// Drops the instances idle past `timeout`, and forgets the sets no
    /// route uses any more.
    pub fn sweep(&self, timeout: Duration) {
        let now = Instant::now();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).retain(|set| set.sweep(now, timeout));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::slots::{SlotPool, TenantSlots};

    /// An exclusive handle, as WASIp2's (the instance itself).
    #[derive(Debug, PartialEq)]
    struct Own(u32);

    impl Handle for Own {
        const EXCLUSIVE: bool = true;
        fn lend(held: &mut Option<Self>) -> Option<Self> {
            held.take()
        }
    }

    /// A shared handle, as WASIp3's (a way to send an instance work).
    #[derive(Clone, Debug, PartialEq)]
    struct Shared(u32);

    impl Handle for Shared {
        const EXCLUSIVE: bool = false;
        fn lend(held: &mut Option<Self>) -> Option<Self> {
            held.clone()
        }
    }

    struct Node {
        pool: Arc<SlotPool>,
        tenant: Arc<TenantSlots>,
        idle: Arc<IdleCount>,
    }

    impl Node {
        fn new(pool: u32, idle: usize) -> Self {
            Node {
                pool: SlotPool::new(pool),
                tenant: Arc::new(TenantSlots::default()),
                idle: Arc::new(IdleCount::new(idle, u64::MAX)),
            }
        }

        fn reserve(&self, cap: Option<u32>) -> impl Fn() -> Result<Slot, Refusal> + '_ {
            move || self.pool.try_take(Some(&self.tenant), cap)
        }
    }

    /// Admits a request; a new instance gets `make`'s handle.
    fn admit_with<H: Handle>(
        kept: &Kept<H>,
        node: &Node,
        cap: Option<u32>,
        mut make: impl FnMut() -> Option<H>,
    ) -> Admitted<H> {
        kept.admit(u64::MAX, &node.reserve(cap), &mut make).expect("admitted").0
    }

    fn admit(kept: &Kept<Own>, node: &Node, cap: Option<u32>) -> Admitted<Own> {
        admit_with(kept, node, cap, || None)
    }

    fn join(kept: &Kept<Shared>, node: &Node, cap: Option<u32>, n: u32) -> Admitted<Shared> {
        admit_with(kept, node, cap, || Some(Shared(n)))
    }

    #[test]
    fn a_reused_instance_serves_one_request_at_a_time_and_comes_back_idle() {
        let node = Node::new(8, 8);
        let kept: Kept<Own> = Kept::new("/r".into(), 3, 1, node.idle.clone());
        let Admitted::New { id, .. } = admit(&kept, &node, None) else { panic!("a new instance") };
        kept.started(id);
        assert_eq!(node.pool.in_use(), 1, "the instance holds a place while it serves");
        // A second request at once: another new instance (one at a time).
        let Admitted::New { id: other, .. } = admit(&kept, &node, None) else { panic!("new") };
        assert_ne!(id, other);
        let (open, released) = kept.finished(id, true, 100, Some(Own(1)));
        assert!(open && released.is_empty());
        assert_eq!((node.pool.in_use(), node.idle.now()), (1, 1), "idle: no pool place");
        // The next request takes it back (the newest idle first).
        match admit(&kept, &node, None) {
            Admitted::Existing { id: again, handle, served } => {
                assert_eq!((again, handle, served), (id, Own(1), 1));
            }
            new => panic!("not reused: {new:?}"),
        }
        assert_eq!((node.pool.in_use(), node.idle.now()), (2, 0));
        drop(kept.finished(other, true, 0, Some(Own(2))));
    }

    #[test]
    fn an_instance_that_reached_its_uses_or_failed_ends_and_frees_its_place() {
        let node = Node::new(8, 8);
        let kept: Kept<Own> = Kept::new("/r".into(), 2, 1, node.idle.clone());
        let Admitted::New { id, .. } = admit(&kept, &node, None) else { panic!() };
        kept.started(id);
        drop(kept.finished(id, true, 0, Some(Own(1))));
        let Admitted::Existing { handle, .. } = admit(&kept, &node, None) else { panic!() };
        // Its second request: the reuse count is reached, it ends.
        let (open, released) = kept.finished(id, true, 0, Some(handle));
        assert!(!open);
        assert_eq!(released.handles, [Own(1)], "the instance goes");
        drop(released);
        assert_eq!((node.pool.in_use(), node.idle.now(), kept.len()), (0, 0, 0));
        // A trap ends it whatever its count.
        let Admitted::New { id, .. } = admit(&kept, &node, None) else { panic!() };
        kept.started(id);
        let (open, released) = kept.finished(id, false, 0, None);
        assert!(!open);
        drop(released);
        assert_eq!((node.pool.in_use(), kept.len()), (0, 0));
    }

    #[test]
    fn a_shared_instance_takes_requests_at_once_holding_one_place() {
        let node = Node::new(8, 8);
        let kept: Kept<Shared> = Kept::new("/s".into(), 100, 3, node.idle.clone());
        let Admitted::New { id, .. } = join(&kept, &node, Some(1), 7) else { panic!() };
        // With the tenant capped at one instance, two more requests share
        // it, before it has even started.
        for n in 1..3 {
            match join(&kept, &node, Some(1), 8) {
                Admitted::Existing { id: on, handle, served } => {
                    assert_eq!((on, handle, served), (id, Shared(7), n));
                }
                new => panic!("not shared: {new:?}"),
            }
        }
        assert_eq!(node.pool.in_use(), 1, "one place for the instance");
        // A fourth would need a second instance: refused by the cap.
        assert_eq!(
            kept.admit(u64::MAX, &node.reserve(Some(1)), &mut || Some(Shared(9))).unwrap_err(),
            Refusal::TenantCap { cap: 1 }
        );
        kept.started(id);
        for _ in 0..2 {
            let (open, _) = kept.finished(id, true, 0, None);
            assert!(open);
            assert_eq!(node.pool.in_use(), 1, "still serving");
        }
        drop(kept.finished(id, true, 0, None));
        assert_eq!((node.pool.in_use(), node.idle.now()), (0, 1), "idle: its place given back");
    }

    #[test]
    fn a_failed_shared_instance_keeps_its_place_until_its_task_has_ended() {
        let node = Node::new(8, 8);
        let kept: Kept<Shared> = Kept::new("/s".into(), 100, 4, node.idle.clone());
        let Admitted::New { id, .. } = join(&kept, &node, None, 1) else { panic!() };
        kept.started(id);
        let _second = join(&kept, &node, None, 2);
        // A trap: the instance closes; its requests end with it.
        kept.close(id);
        let (open, released) = kept.finished(id, false, 0, None);
        assert!(!open);
        drop(released);
        let (_, released) = kept.finished(id, false, 0, None);
        drop(released);
        assert_eq!(node.pool.in_use(), 1, "the instance has not ended yet");
        assert!(matches!(join(&kept, &node, None, 3), Admitted::New { .. }), "not to a closed one");
        drop(kept.ended(id));
        assert_eq!(node.pool.in_use(), 1, "only the new instance's place");
    }

    #[test]
    fn a_request_refused_after_admission_gives_its_place_back() {
        let node = Node::new(8, 8);
        let kept: Kept<Shared> = Kept::new("/s".into(), 100, 4, node.idle.clone());
        // A new instance made for a request that is then refused never
        // starts, and its place is free.
        let Admitted::New { id, .. } = join(&kept, &node, None, 1) else { panic!() };
        let (others, released) = kept.give_back(id, None);
        assert!(!others);
        drop(released);
        assert_eq!((node.pool.in_use(), kept.len()), (0, 0));
        // With another request admitted to it meanwhile, it must start.
        let Admitted::New { id, .. } = join(&kept, &node, None, 2) else { panic!() };
        let Admitted::Existing { .. } = join(&kept, &node, None, 3) else { panic!("joins") };
        let (others, released) = kept.give_back(id, None);
        assert!(others && released.is_empty());
        assert_eq!(node.pool.in_use(), 1);
    }

    #[test]
    fn idle_instances_end_after_the_timeout_or_when_they_outgrew_the_limit() {
        let node = Node::new(8, 8);
        let kept: Kept<Own> = Kept::new("/r".into(), 100, 1, node.idle.clone());
        let Admitted::New { id: first, .. } = admit(&kept, &node, None) else { panic!() };
        let Admitted::New { id: second, .. } = admit(&kept, &node, None) else { panic!() };
        for (n, id) in [first, second].into_iter().enumerate() {
            kept.started(id);
            drop(kept.finished(id, true, 1000 * (n as u64 + 1), Some(Own(n as u32))));
        }
        assert_eq!(node.idle.now(), 2);
        // The newest (2000 bytes) is over a 1500-byte limit: it ends; the
        // other serves.
        let (admitted, released) = kept.admit(1500, &node.reserve(None), &mut || None).unwrap();
        assert_eq!(released.handles, [Own(1)]);
        drop(released);
        let Admitted::Existing { id, handle, .. } = admitted else { panic!() };
        drop(kept.finished(id, true, 1000, Some(handle)));
        // Idle past the timeout: swept.
        let later = Instant::now() + Duration::from_secs(11);
        assert!(kept.sweep(Instant::now(), Duration::from_secs(10)).is_empty());
        let swept = kept.sweep(later, Duration::from_secs(10));
        assert_eq!(swept.handles, [Own(0)]);
        drop(swept);
        assert_eq!((node.idle.now(), node.pool.in_use(), kept.len()), (0, 0, 0));
    }

    #[test]
    fn the_node_keeps_no_more_idle_instances_than_it_may() {
        let node = Node::new(8, 1);
        let kept: Kept<Own> = Kept::new("/r".into(), 100, 1, node.idle.clone());
        let Admitted::New { id: a, .. } = admit(&kept, &node, None) else { panic!() };
        let Admitted::New { id: b, .. } = admit(&kept, &node, None) else { panic!() };
        kept.started(a);
        kept.started(b);
        let (kept_a, _) = kept.finished(a, true, 0, Some(Own(1)));
        let (kept_b, released) = kept.finished(b, true, 0, Some(Own(2)));
        assert!(kept_a && !kept_b, "one idle place on the node");
        assert_eq!(released.handles, [Own(2)]);
        drop(released);
        assert_eq!((node.idle.now(), node.pool.in_use()), (1, 0));
    }

    #[test]
    fn instances_returning_no_answer_on_their_second_request_turn_reuse_off() {
        let node = Node::new(8, 8);
        let kept: Kept<Own> = Kept::new("/js".into(), 100, 1, node.idle.clone());
        for n in 0..FAILURES_BEFORE_GIVING_UP {
            assert!(kept.keeping());
            drop(kept.reused_instance_ended(false, true, true));
            let _ = n;
        }
        assert!(!kept.keeping());
        // Nothing is kept any more: a request's instance ends after it.
        let Admitted::New { id, .. } = admit(&kept, &node, None) else { panic!() };
        kept.started(id);
        let (open, released) = kept.finished(id, true, 0, Some(Own(1)));
        assert!(!open && !released.is_empty());
        // A trap or a well-answered reuse never turns it off.
        let other: Kept<Own> = Kept::new("/ok".into(), 100, 1, node.idle.clone());
        drop(other.reused_instance_ended(true, false, true));
        for _ in 0..5 {
            drop(other.reused_instance_ended(false, true, true));
        }
        assert!(other.keeping());
    }
}
