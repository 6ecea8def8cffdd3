//! Cores: one pinned thread per core, each with its own compio runtime,
//! io_uring, listener (`SO_REUSEPORT`), buffer pool and the chunks it owns
//! (shard by handle). A request that lands on a core that does not own
//! its chunk goes to the owner over a bounded channel, with its buffers;
//! the reply brings them back (docs/design/004-chunkd-runtime.md).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;
use ringfs_wire::msg::{Body, PeerKind};

use crate::dio::AlignedBuf;
use crate::error::ChunkError;
use crate::lease::Lease;
use crate::node::Node;
use crate::peer::PeerPool;
use crate::pool::BufferPool;
use crate::store::Store;

/// Requests handed to an owner core that may wait in its inbox; beyond
/// this, senders wait (backpressure to the connection that read them).
pub const INBOX_CAPACITY: usize = 256;

/// The owner core of a chunk. Handles are allocated in sequence, so they
/// are mixed first: consecutive chunks land on different cores.
pub fn owner_core(handle: u64, cores: usize) -> usize {
    assert!(cores > 0);
    let mixed = handle.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (mixed % cores as u64) as usize
}

/// Work sent to run on another core.
pub type CoreTask = Box<dyn FnOnce(&Rc<Core>) + Send>;

/// What a core's inbox carries.
pub enum CoreMsg {
    Job(Job),
    /// Work on another core's state (listing, reports), run on that core.
    Run(CoreTask),
}

/// A request for an owner core.
pub struct Job {
    pub body: Body,
    pub from: PeerKind,
    /// Request data (writes) or empty buffers to fill (reads).
    pub bufs: Vec<AlignedBuf>,
    pub data_len: u64,
    pub reply: oneshot::Sender<Reply>,
}

/// An owner core's answer: a body, and the buffers (the first `data_len`
/// bytes of them are reply data).
pub struct Reply {
    pub body: Body,
    pub bufs: Vec<AlignedBuf>,
    pub data_len: u64,
}

impl Reply {
    pub fn body(body: Body, bufs: Vec<AlignedBuf>) -> Reply {
        Reply {
            body,
            bufs,
            data_len: 0,
        }
    }

    pub fn error(e: &ChunkError, node: &Node, bufs: Vec<AlignedBuf>) -> Reply {
        let reply = e.to_reply(node.node_id(), &node.settings.advertise);
        Reply::body(Body::ErrorReply(Box::new(reply)), bufs)
    }
}

/// Everything one core owns.
pub struct Core {
    pub id: usize,
    pub node: Arc<Node>,
    pub store: Store,
    pub pool: BufferPool,
    pub peers: PeerPool,
    pub leases: RefCell<HashMap<u64, Lease>>,
    pub pushes: crate::push::PushStore,
    /// Requests running on this core (the scrubber steps aside for them).
    pub foreground: std::cell::Cell<usize>,
}

impl Core {
    pub fn metrics(&self) -> &crate::metrics::CoreMetrics {
        self.node.metrics.core(self.id)
    }

    /// Runs `job` on the owner of `handle`: here, or through its inbox.
    pub async fn route(self: &Rc<Self>, handle: u64, job: Job) {
        let owner = owner_core(handle, self.node.cores());
        if owner == self.id {
            let reply = crate::ops::execute(self, job.body, job.from, job.bufs, job.data_len).await;
            let _ = job.reply.send(reply);
            return;
        }
        self.metrics().handoff();
        let Some(inboxes) = self.node.inboxes.get() else {
            let _ = job.reply.send(Reply::error(
                &ChunkError::Internal("cores not started".into()),
                &self.node,
                Vec::new(),
            ));
            return;
        };
        if let Err(e) = inboxes[owner].send(CoreMsg::Job(job)).await
            && let CoreMsg::Job(job) = e.into_inner()
        {
            let _ = job.reply.send(Reply::error(
                &ChunkError::Internal(format!("core {owner} is gone")),
                &self.node,
                job.bufs,
            ));
        }
    }

    /// Sends `body` to the owner of `handle` and waits for the reply.
    pub async fn call(
        self: &Rc<Self>,
        handle: u64,
        body: Body,
        from: PeerKind,
        bufs: Vec<AlignedBuf>,
        data_len: u64,
    ) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.route(
            handle,
            Job {
                body,
                from,
                bufs,
                data_len,
                reply: tx,
            },
        )
        .await;
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Reply::error(
                &ChunkError::Internal("owner core dropped the request".into()),
                &self.node,
                Vec::new(),
            ),
        }
    }
}

/// Serves this core's inbox: every job runs as its own task, so a slow
/// disk operation does not hold up the next request.
pub async fn serve_inbox(core: Rc<Core>, inbox: async_channel::Receiver<CoreMsg>) {
    while let Ok(msg) = inbox.recv().await {
        match msg {
            CoreMsg::Job(job) => {
                let core = core.clone();
                compio::runtime::spawn(async move {
                    let reply =
                        crate::ops::execute(&core, job.body, job.from, job.bufs, job.data_len)
                            .await;
                    let _ = job.reply.send(reply);
                })
                .detach();
            }
            CoreMsg::Run(f) => f(&core),
        }
    }
}

/// Runs `f` on core `target` (here if it is this core) and returns its
/// result.
pub async fn on_core<T: Send + 'static>(
    core: &Rc<Core>,
    target: usize,
    f: impl FnOnce(&Rc<Core>) -> T + Send + 'static,
) -> Option<T> {
    if target == core.id {
        return Some(f(core));
    }
    let (tx, rx) = oneshot::channel();
    let inboxes = core.node.inboxes.get()?;
    let run: CoreTask = Box::new(move |c| {
        let _ = tx.send(f(c));
    });
    inboxes.get(target)?.send(CoreMsg::Run(run)).await.ok()?;
    rx.await.ok()
}
