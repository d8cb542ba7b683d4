//! One simulated node: its disk, which outlives crashes, and while it is up,
//! the real store loop (`raftstore::store::Store`) running over that disk and
//! the simulated transport.

use super::network::SimTransport;
use crate::hlc::Hlc;
use crate::raftstore::store::{ApplyObserver, Store};
use crate::raftstore::{RaftConfig, ReplicaRegistry, StoreHandle};
use crate::storage::sim_disk::SimDisk;
use crate::storage::Engine;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Running {
    pub store: Store,
    pub handle: StoreHandle,
    pub transport: Arc<SimTransport>,
}

pub struct SimNode {
    pub id: u64,
    pub disk: Arc<SimDisk>,
    pub running: Option<Running>,
    /// A paused node (SIGSTOP) or one waiting on a slow disk takes no turns until then.
    pub stalled_until_ms: u64,
    /// A crashed node comes back at this time.
    pub restart_at_ms: Option<u64>,
    pub crashes: u64,
}

impl SimNode {
    pub fn new(id: u64) -> Self {
        SimNode {
            id,
            disk: Arc::new(SimDisk::new()),
            running: None,
            stalled_until_ms: 0,
            restart_at_ms: None,
            crashes: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// Starts (or restarts) the node from what its disk holds.
    pub fn start(
        &mut self,
        cfg: &RaftConfig,
        base: Instant,
        clock_ms: &Arc<AtomicU64>,
        now_ms: u64,
        observer: ApplyObserver,
    ) -> anyhow::Result<()> {
        let now = base + Duration::from_millis(now_ms);
        let engine = Arc::new(Engine::simulated(self.disk.clone()));
        let transport = Arc::new(SimTransport::new(self.id, now));
        let clock = clock_ms.clone();
        // Physical time is the simulated clock, so versions replay exactly too.
        let physical = Arc::new(move || (1_700_000_000_000 + clock.load(Ordering::Relaxed)) * 1_000_000);
        let hlc = Arc::new(Hlc::with_physical_clock(self.id as u32, physical));
        let registry = ReplicaRegistry::default();
        let (mut store, handle) = Store::open(self.id, engine, cfg.clone(), registry, transport.clone(), hlc, now)?;
        store.set_apply_observer(observer);
        self.running = Some(Running { store, handle, transport });
        self.restart_at_ms = None;
        Ok(())
    }

    /// A power cut: the process dies and the disk keeps only what was synced,
    /// plus the first `keep_unsynced` unsynced batches.
    pub fn crash(&mut self, keep_unsynced: usize, restart_at_ms: u64) {
        self.running = None;
        self.disk.crash(keep_unsynced);
        self.disk.set_sync_latency_ms(0);
        self.restart_at_ms = Some(restart_at_ms);
        self.stalled_until_ms = 0;
        self.crashes += 1;
    }
}
