//! Turns for photo work (decode, detect, embed), shared round-robin
//! between client addresses.
//!
//! Two photos are worked on at once (they keep both cores busy). When more
//! wait, the next turn goes to the next client address in a ring, not to
//! the oldest request: a client that sends many slow photos (200 faces
//! each, or huge ones) queues behind itself. A photo's work also passes
//! its turn on between steps (after PNet, between RNet/ONet batches of 16
//! crops and embedding batches of 8 faces) when someone waits, so another
//! client's ordinary search waits for one step per address ahead of it,
//! not for a whole 200-face photo. A request that gets no turn within the
//! wait gets 503 with Retry-After.
//!
//! Behind a reverse proxy every request comes from the proxy's address and
//! the queue is first come, first served again.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use tokio::sync::oneshot;

use super::error::ApiError;

/// The client's address, as the listener saw it (unspecified when the
/// router is driven without a listener).
pub struct Client(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Client(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ))
    }
}

pub struct FairGate {
    state: Mutex<State>,
    wait: Duration,
}

struct State {
    free: usize,
    turns: usize,
    /// Called when the last turn comes back (nothing in flight).
    on_idle: fn(),
    /// Waiters per address, oldest first.
    queues: HashMap<IpAddr, VecDeque<(u64, oneshot::Sender<()>)>>,
    /// Addresses with waiters, in the order they get their next turn.
    ring: VecDeque<IpAddr>,
    next_id: u64,
}

/// One turn, given back (to the next address in the ring) on drop.
pub struct Turn {
    gate: Arc<FairGate>,
    who: IpAddr,
    held: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.held {
            self.gate.release();
        }
    }
}

impl Turn {
    /// No other turn is held and nobody waits: this photo may use every
    /// core (see `serve::lanes`).
    pub fn alone(&self) -> bool {
        let s = self.gate.lock();
        s.free + 1 >= s.turns && s.ring.is_empty()
    }

    /// Between two steps of work, on a blocking thread: when another
    /// address waits, hand the turn to the next address in the ring and
    /// wait for it to come round again; when nobody else waits, go on at
    /// once. Passing to a later request of the same address would only
    /// reorder that client's own photos and keep more photos half done in
    /// memory (each holds its decoded pixels and detector state): with
    /// four clients behind one address that was 2.05x the weights resident
    /// and more handovers than steps.
    pub fn pass(&mut self) -> Result<(), ApiError> {
        let (id, rx) = {
            let mut s = self.gate.lock();
            if s.ring.iter().all(|a| *a == self.who) {
                return Ok(());
            }
            // The next turn goes to another address: this one moves to the
            // back of the ring. There the photo waits ahead of its
            // address's newer requests, so a photo already begun is
            // finished before another of the same client starts.
            if let Some(pos) = s.ring.iter().position(|a| *a == self.who) {
                s.ring.remove(pos);
                s.ring.push_back(self.who);
            }
            let queued = FairGate::queue(&mut s, self.who, true);
            FairGate::hand_over(&mut s);
            queued
        };
        self.held = false;
        let handle = tokio::runtime::Handle::try_current().map_err(ApiError::internal)?;
        handle.block_on(self.gate.wait_turn(self.who, id, rx))?;
        self.held = true;
        Ok(())
    }
}

impl FairGate {
    pub fn new(turns: usize, wait: Duration, on_idle: fn()) -> Arc<Self> {
        Arc::new(FairGate {
            state: Mutex::new(State {
                free: turns.max(1),
                turns: turns.max(1),
                on_idle,
                queues: HashMap::new(),
                ring: VecDeque::new(),
                next_id: 0,
            }),
            wait,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for a turn for a request from `who`.
    pub async fn enter(self: &Arc<Self>, who: IpAddr) -> Result<Turn, ApiError> {
        let (id, rx) = {
            let mut s = self.lock();
            if s.free > 0 && s.ring.is_empty() {
                s.free -= 1;
                return Ok(self.turn(who));
            }
            Self::queue(&mut s, who, false)
        };
        self.wait_turn(who, id, rx).await?;
        Ok(self.turn(who))
    }

    fn turn(self: &Arc<Self>, who: IpAddr) -> Turn {
        Turn {
            gate: self.clone(),
            who,
            held: true,
        }
    }

    /// Queue a waiter of `who`, behind its address's other waiters or,
    /// for work already begun, `ahead` of them.
    fn queue(s: &mut State, who: IpAddr, ahead: bool) -> (u64, oneshot::Receiver<()>) {
        let id = s.next_id;
        s.next_id += 1;
        let (tx, rx) = oneshot::channel();
        let q = s.queues.entry(who).or_default();
        let first = q.is_empty();
        if ahead {
            q.push_front((id, tx));
        } else {
            q.push_back((id, tx));
        }
        if first {
            s.ring.push_back(who);
        }
        (id, rx)
    }

    /// Wait until the queued entry `id` is handed a turn, or give up.
    async fn wait_turn(
        &self,
        who: IpAddr,
        id: u64,
        mut rx: oneshot::Receiver<()>,
    ) -> Result<(), ApiError> {
        if let Ok(Ok(())) = tokio::time::timeout(self.wait, &mut rx).await {
            return Ok(());
        }
        // Timed out: leave the queue. Turns are handed over under the
        // lock, so if our entry is gone the turn is already in `rx`.
        let mut s = self.lock();
        let mut queued = false;
        if let Some(q) = s.queues.get_mut(&who) {
            if let Some(pos) = q.iter().position(|(i, _)| *i == id) {
                q.remove(pos);
                queued = true;
            }
            if q.is_empty() {
                s.queues.remove(&who);
                s.ring.retain(|a| *a != who);
            }
        }
        if !queued && rx.try_recv().is_ok() {
            Self::hand_over(&mut s);
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy with other photos; try again shortly",
        )
        .with_retry_after(2))
    }

    fn release(&self) {
        let mut s = self.lock();
        Self::hand_over(&mut s);
    }

    /// Give a turn to the next address in the ring, or back to the pool.
    fn hand_over(s: &mut State) {
        while let Some(who) = s.ring.pop_front() {
            let Some(q) = s.queues.get_mut(&who) else {
                continue;
            };
            let next = q.pop_front();
            if q.is_empty() {
                s.queues.remove(&who);
            } else {
                s.ring.push_back(who);
            }
            if let Some((_, tx)) = next {
                // A waiter that gave up has dropped its receiver: try the next.
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        s.free += 1;
        if s.free == s.turns {
            (s.on_idle)();
        }
    }

    /// Turns free now (for tests and stats).
    #[cfg(test)]
    fn free(&self) -> usize {
        self.lock().free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
    }

    #[tokio::test]
    async fn turns_go_round_the_addresses_not_by_age() {
        let g = FairGate::new(1, Duration::from_secs(5), || {});
        let first = g.enter(ip(1)).await.ok();
        assert!(first.is_some());
        let order = Arc::new(Mutex::new(vec![]));
        let mut tasks = vec![];
        // Address 1 queues three requests, then address 2 queues one.
        for (n, who) in [(1, 1), (2, 1), (3, 1), (4, 2)] {
            let (g, order) = (g.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let t = g.enter(ip(who)).await;
                order.lock().unwrap().push(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(t);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        // Address 2's request goes second, not last.
        assert_eq!(*order.lock().unwrap(), vec![1, 4, 2, 3]);
        assert_eq!(g.free(), 1);
    }

    #[tokio::test]
    async fn a_waiter_that_times_out_gets_503_and_loses_no_turn() {
        let g = FairGate::new(1, Duration::from_millis(20), || {});
        let held = g.enter(ip(1)).await.ok();
        let e = g.enter(ip(2)).await.err().map(|e| e.status);
        assert_eq!(e, Some(StatusCode::SERVICE_UNAVAILABLE));
        drop(held);
        assert_eq!(g.free(), 1);
        assert!(g.enter(ip(2)).await.is_ok());
    }

    /// A long piece of work passes its turn between steps: a request from
    /// another address that arrives meanwhile runs before the next step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_photo_passes_its_turn_between_steps() {
        let g = FairGate::new(1, Duration::from_secs(5), || {});
        let order = Arc::new(Mutex::new(vec![]));
        let mut long = g.enter(ip(1)).await.ok().unwrap();
        let (o, g2) = (order.clone(), g.clone());
        let other = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _t = g2.enter(ip(2)).await;
            o.lock().unwrap().push("other");
        });
        let o = order.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(15));
                o.lock().unwrap().push("step");
                long.pass().unwrap();
            }
        })
        .await
        .unwrap();
        other.await.unwrap();
        let got = order.lock().unwrap().clone();
        assert_eq!(got[..3], ["step", "step", "other"][..], "{got:?}");
        assert_eq!(g.free(), 1);
    }

    /// Passing a turn serves other addresses only: a newer request of the
    /// same address waits until the photo begun is finished, also when it
    /// was queued before another address's request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_turn_is_passed_to_other_addresses_not_to_newer_requests_of_its_own() {
        let g = FairGate::new(1, Duration::from_secs(5), || {});
        let order = Arc::new(Mutex::new(vec![]));
        let mut long = g.enter(ip(1)).await.ok().unwrap();
        let mut others = vec![];
        for (name, who, after) in [("same", 1, 10), ("other", 2, 20)] {
            let (o, g2) = (order.clone(), g.clone());
            others.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let _t = g2.enter(ip(who)).await;
                o.lock().unwrap().push(name);
            }));
        }
        let o = order.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(15));
                o.lock().unwrap().push("step");
                long.pass().unwrap();
            }
            o.lock().unwrap().push("done");
        })
        .await
        .unwrap();
        for t in others {
            t.await.unwrap();
        }
        let got = order.lock().unwrap().clone();
        assert_eq!(
            got,
            ["step", "step", "other", "step", "done", "same"],
            "{got:?}"
        );
        assert_eq!(g.free(), 1);
    }
}
