//! The runtime's side of [`PartitionOwnership`]: a checkpoint on request through the
//! checkpointer, evictions and adoptions through every shard supervisor.

use actix::Addr;
use tokio::sync::oneshot;

use super::checkpointer::{CheckpointError, CheckpointSoon, Checkpointer, StoredDevicesChanged};
use super::ports::PartitionOwnership;
use super::shard::{AdoptDevices, EvictDevices, ShardSupervisor};

/// Checkpoints and evictions for a partitioned source.
pub struct RuntimeOwnership {
    pub checkpointer: Option<Addr<Checkpointer>>,
    pub shards: Vec<Addr<ShardSupervisor>>,
}

impl PartitionOwnership for RuntimeOwnership {
    fn checkpoint_soon(&self) -> oneshot::Receiver<Result<u64, CheckpointError>> {
        let (tx, rx) = oneshot::channel();
        match self.checkpointer.clone() {
            // the caller is a source thread that must keep answering barriers while it waits:
            // the request waits on a thread of its own
            Some(checkpointer) => {
                std::thread::spawn(move || {
                    let answer = futures::executor::block_on(checkpointer.send(CheckpointSoon))
                        .unwrap_or(Err(CheckpointError::Stopped));
                    let _ = tx.send(answer);
                });
            }
            None => {
                let _ = tx.send(Err(CheckpointError::Disabled));
            }
        }
        rx
    }

    fn adopt(&self, devices: Vec<String>) {
        for s in &self.shards {
            s.do_send(AdoptDevices(devices.clone()));
        }
    }

    fn stored_devices_changed(&self, by: i64) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.do_send(StoredDevicesChanged(by));
        }
    }

    fn evict(&self, devices: Vec<String>) -> usize {
        let evictions: Vec<_> = self
            .shards
            .iter()
            .map(|s| s.send(EvictDevices(devices.clone())))
            .collect();
        futures::executor::block_on(futures::future::join_all(evictions))
            .into_iter()
            .map(|r| r.unwrap_or(0))
            .sum()
    }
}
