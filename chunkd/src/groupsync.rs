//! Group commit for one sync target (a data file's `fdatasync`, a chunks
//! directory's `fsync`): a caller that arrives while a sync runs waits for
//! the next one, which covers it and everyone else who arrived meanwhile.
//! So N concurrent writers cost two syncs, not N, and each caller's sync
//! starts after its own change was made.

use std::cell::RefCell;
use std::future::Future;

use local_event::Event;

#[derive(Default)]
struct State {
    running: bool,
    /// Syncs started, and the last one that completed.
    started: u64,
    completed: u64,
    /// The latest failed sync and why: everyone it covered fails.
    failed: Option<(u64, String)>,
}

#[derive(Default)]
pub struct GroupSync {
    state: RefCell<State>,
    event: Event,
}

impl GroupSync {
    pub fn new() -> GroupSync {
        GroupSync::default()
    }

    /// Returns once a sync that started after this call has completed,
    /// running `sync` itself when none is running. Bounded: each turn of
    /// the loop either completes a sync or waits for a running one.
    pub async fn sync<F, Fut>(&self, sync: F) -> Result<(), String>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<()>>,
    {
        let target = self.state.borrow().started + 1;
        loop {
            {
                let s = self.state.borrow();
                if let Some((generation, why)) = &s.failed
                    && *generation >= target
                {
                    return Err(why.clone());
                }
                if s.completed >= target {
                    return Ok(());
                }
            }
            if !self.state.borrow().running {
                let generation = {
                    let mut s = self.state.borrow_mut();
                    s.running = true;
                    s.started += 1;
                    s.started
                };
                assert!(
                    generation >= target,
                    "a sync started before the caller came"
                );
                let r = sync().await;
                {
                    let mut s = self.state.borrow_mut();
                    s.running = false;
                    s.completed = generation;
                    if let Err(e) = &r {
                        s.failed = Some((generation, e.to_string()));
                    }
                }
                self.event.notify_all();
                continue;
            }
            let listener = self.event.listen();
            let settled = {
                let s = self.state.borrow();
                s.completed >= target || !s.running
            };
            if !settled {
                listener.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::GroupSync;

    #[test]
    fn concurrent_callers_share_syncs_and_failures_reach_everyone_covered() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let g = Rc::new(GroupSync::new());
            let runs = Rc::new(Cell::new(0u32));
            let sync = {
                let runs = runs.clone();
                move || {
                    let runs = runs.clone();
                    async move {
                        runs.set(runs.get() + 1);
                        compio::time::sleep(std::time::Duration::from_millis(5)).await;
                        Ok(())
                    }
                }
            };
            let all: Vec<_> = (0..20).map(|_| g.sync(sync.clone())).collect();
            for r in futures_util::future::join_all(all).await {
                r.unwrap();
            }
            // The first caller's sync, then one for everyone who came while it ran.
            assert_eq!(runs.get(), 2);
            let failing = || async { Err(std::io::Error::other("disk gone")) };
            let (a, b) = futures_util::future::join(g.sync(failing), g.sync(failing)).await;
            assert_eq!(a.unwrap_err(), "disk gone");
            assert_eq!(b.unwrap_err(), "disk gone");
            g.sync(sync.clone()).await.unwrap();
        });
    }
}
