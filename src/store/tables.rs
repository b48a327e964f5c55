//! Typed access to the column families that change between checkpoints. `devices`, `positions`
//! and `meta` change only through the checkpoint's one synced write batch
//! ([`super::StateStore::commit`]); the raw database is private to this module's parent, so the
//! only other way to write is a table here.
//!
//! - [`OutboxTable`]: the `outbox` column family: the notifiers' outboxes and the push
//!   subscriptions (each user keeps its own key layout under its own tag byte).

use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use super::CF_OUTBOX;

/// The `outbox` column family, written through between checkpoints.
pub struct OutboxTable<'a> {
    db: &'a DB,
    cf: &'a ColumnFamily,
}

/// Changes to the `outbox` column family, written together by [`OutboxTable::write`].
pub struct OutboxBatch<'a> {
    batch: WriteBatch,
    cf: &'a ColumnFamily,
}

impl OutboxBatch<'_> {
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.batch.put_cf(self.cf, key, value);
    }

    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.batch.delete_cf(self.cf, key);
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

impl<'a> OutboxTable<'a> {
    pub(super) fn new(db: &'a DB) -> Self {
        OutboxTable {
            db,
            cf: db.cf_handle(CF_OUTBOX).expect("opened with every column family"),
        }
    }

    /// An empty batch of changes to this table.
    pub fn batch(&self) -> OutboxBatch<'a> {
        OutboxBatch {
            batch: WriteBatch::default(),
            cf: self.cf,
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        Ok(self.db.get_pinned_cf(self.cf, key)?.map(|v| v.to_vec()))
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + use<'a> {
        let prefix = prefix.to_vec();
        self.db
            .iterator_cf(self.cf, IteratorMode::From(&prefix, Direction::Forward))
            .take_while(move |item| match item {
                Ok((k, _)) => k.starts_with(&prefix),
                Err(_) => true,
            })
    }

    /// Writes `batch` in one RocksDB write batch: synced (on disk when this returns), or only to
    /// RocksDB's log (a crash of plume keeps it; a power cut may forget it, and the next synced
    /// write makes it durable, the log being ordered).
    pub fn write(&self, batch: OutboxBatch<'_>, sync: bool) -> Result<(), rocksdb::Error> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch.batch, &options)
    }

    /// Syncs RocksDB's log: every write before this one (unsynced ones included) is on disk
    /// when it returns.
    pub fn sync(&self) -> Result<(), rocksdb::Error> {
        self.db.flush_wal(true)
    }
}
