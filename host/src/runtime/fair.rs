//! Slots handed out to tenants in turn: the node's compile slots. A tenant
//! that queues fifty compilations waits behind itself, not in front of
//! everyone else: when a slot frees, the next tenant in the rotation gets
//! it, each tenant's own requests served first come, first served.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Who waits for a slot: a tenant, or the node itself (`None`: compiling
/// what was deployed through another node).
pub type Claimant = Option<i64>;

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Each claimant's waiters, oldest first.
    waiting: HashMap<Claimant, VecDeque<oneshot::Sender<()>>>,
    /// Claimants with waiters, in the order they get the next slots.
    turn: VecDeque<Claimant>,
}

/// A fixed number of slots, handed out round-robin across claimants.
#[derive(Debug, Clone)]
pub struct FairSlots {
    state: Arc<Mutex<State>>,
}

/// A slot, given back (to the next claimant in turn) when dropped.
#[derive(Debug)]
pub struct FairSlot {
    state: Arc<Mutex<State>>,
}

impl FairSlots {
    /// `slots` slots, all free.
    pub fn new(slots: usize) -> Self {
        Self { state: Arc::new(Mutex::new(State { free: slots, ..State::default() })) }
    }

    fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
        state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a slot for `claimant`. Dropping the future gives up its
    /// place in the queue.
    pub async fn acquire(&self, claimant: Claimant) -> FairSlot {
        let rx = {
            let mut state = Self::lock(&self.state);
            if state.free > 0 && state.turn.is_empty() {
                state.free -= 1;
                return FairSlot { state: self.state.clone() };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.waiting.entry(claimant).or_default();
            if queue.is_empty() {
                state.turn.push_back(claimant);
            }
            state.waiting.get_mut(&claimant).expect("just made").push_back(tx);
            rx
        };
        // Handed over by a slot that freed. If this future is dropped after
        // the hand-over and before it is seen, the guard passes it on.
        let mut waiting = Waiting { rx: Some(rx), state: self.state.clone() };
        let _ = waiting.rx.as_mut().expect("set above").await;
        waiting.rx = None;
        FairSlot { state: self.state.clone() }
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        Self::lock(&self.state).free
    }

    /// Claims waiting for a slot now, every claimant's together.
    pub fn waiting(&self) -> usize {
        Self::lock(&self.state).waiting.values().map(VecDeque::len).sum()
    }
}

/// A claimant's wait: a slot handed to it after it stopped waiting goes on
/// to the next in turn.
struct Waiting {
    rx: Option<oneshot::Receiver<()>>,
    state: Arc<Mutex<State>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                release(&self.state);
            }
        }
    }
}

impl Drop for FairSlot {
    fn drop(&mut self) {
        release(&self.state);
    }
}

/// Gives a slot to the next claimant in turn whose waiter is still there,
/// or back to the free ones.
fn release(state: &Mutex<State>) {
    let mut state = FairSlots::lock(state);
    while let Some(claimant) = state.turn.pop_front() {
        let Some(queue) = state.waiting.get_mut(&claimant) else { continue };
        let next = queue.pop_front();
        if queue.is_empty() {
            state.waiting.remove(&claimant);
        } else {
            state.turn.push_back(claimant);
        }
        if let Some(tx) = next
            && tx.send(()).is_ok()
        {
            return;
        }
    }
    state.free += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order in which queued claimants get a single slot.
    async fn order(queued: &[Claimant]) -> Vec<Claimant> {
        let slots = FairSlots::new(1);
        let first = slots.acquire(Some(0)).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for claimant in queued {
            let (slots, tx, claimant) = (slots.clone(), tx.clone(), *claimant);
            tasks.push(tokio::spawn(async move {
                let slot = slots.acquire(claimant).await;
                tx.send(claimant).unwrap();
                drop(slot);
            }));
            // Queued in this order.
            tokio::task::yield_now().await;
        }
        drop(first);
        let mut got = Vec::new();
        for _ in queued {
            got.push(rx.recv().await.unwrap());
        }
        got
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tenants_take_turns_whatever_they_queued() {
        // Tenant 1 queues five before tenant 2 queues one and the node one:
        // each of the others is served after at most one of tenant 1's.
        let got = order(&[Some(1), Some(1), Some(1), Some(1), Some(1), Some(2), None]).await;
        assert_eq!(got, [Some(1), Some(2), None, Some(1), Some(1), Some(1), Some(1)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_that_gave_up_passes_its_turn_on() {
        let slots = FairSlots::new(1);
        let held = slots.acquire(Some(1)).await;
        let gone = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(Some(2)).await }
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        let next = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(Some(3)).await }
        });
        tokio::task::yield_now().await;
        drop(held);
        let slot = tokio::time::timeout(std::time::Duration::from_secs(5), next).await;
        assert!(slot.is_ok(), "the slot went to the one still waiting");
        drop(slot);
        assert_eq!(slots.free(), 1, "and came back");
    }
}
