//! Turns for photo work (decode, detect, embed), shared round-robin
//! between client addresses.
//!
//! Two photos are worked on at once (they keep both cores busy). When more
//! wait, the next turn goes to the next client address in a ring, not to
//! the oldest request: a client that sends many slow photos (200 faces
//! each, or huge ones) queues behind itself, and another client's ordinary
//! search waits for at most one photo per address ahead of it instead of
//! the whole backlog. A request that gets no turn within the wait gets 503
//! with Retry-After.
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

#[derive(Default)]
struct State {
    free: usize,
    /// Waiters per address, oldest first.
    queues: HashMap<IpAddr, VecDeque<(u64, oneshot::Sender<()>)>>,
    /// Addresses with waiters, in the order they get their next turn.
    ring: VecDeque<IpAddr>,
    next_id: u64,
}

/// One turn, given back (to the next address in the ring) on drop.
pub struct Turn(Arc<FairGate>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl FairGate {
    pub fn new(turns: usize, wait: Duration) -> Arc<Self> {
        Arc::new(FairGate {
            state: Mutex::new(State {
                free: turns.max(1),
                ..State::default()
            }),
            wait,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for a turn for a request from `who`.
    pub async fn enter(self: &Arc<Self>, who: IpAddr) -> Result<Turn, ApiError> {
        let (id, mut rx) = {
            let mut s = self.lock();
            if s.free > 0 && s.ring.is_empty() {
                s.free -= 1;
                return Ok(Turn(self.clone()));
            }
            let id = s.next_id;
            s.next_id += 1;
            let (tx, rx) = oneshot::channel();
            let q = s.queues.entry(who).or_default();
            let first = q.is_empty();
            q.push_back((id, tx));
            if first {
                s.ring.push_back(who);
            }
            (id, rx)
        };
        if let Ok(Ok(())) = tokio::time::timeout(self.wait, &mut rx).await {
            return Ok(Turn(self.clone()));
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
        drop(s);
        if !queued && rx.try_recv().is_ok() {
            drop(Turn(self.clone()));
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy with other photos; try again shortly",
        )
        .with_retry_after(2))
    }

    fn release(&self) {
        let mut s = self.lock();
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
        let g = FairGate::new(1, Duration::from_secs(5));
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
        let g = FairGate::new(1, Duration::from_millis(20));
        let held = g.enter(ip(1)).await.ok();
        let e = g.enter(ip(2)).await.err().map(|e| e.status);
        assert_eq!(e, Some(StatusCode::SERVICE_UNAVAILABLE));
        drop(held);
        assert_eq!(g.free(), 1);
        assert!(g.enter(ip(2)).await.is_ok());
    }
}
