//! Receiving a snapshot's files: the parts after the Raft message in a snapshot
//! stream. Each file is written to disk as its pieces arrive (nothing but the
//! piece in hand is held in memory), checked against the size and CRC-32 the
//! message announced, synced, and only then moved where the store will look
//! for it. A stream that breaks or lies leaves nothing behind.

use super::snapshot::{file_name, received_dir};
use cairn_proto::internal::{SnapshotChunk, SnapshotFile};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;

/// Why a snapshot's files were refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("snapshot file piece failed its checksum: CRC-32 {got:08x}, the sender computed {sent:08x}")]
    Damaged { got: u32, sent: u32 },
    #[error("snapshot file {file} failed its checksum: CRC-32 {got:08x}, announced {sent:08x}")]
    FileDamaged { file: String, got: u32, sent: u32 },
    #[error("snapshot stream out of order: part {got} where part {expected} was due")]
    OutOfOrder { got: u32, expected: u32 },
    #[error("snapshot file {file} is longer than the {announced} bytes announced")]
    TooLong { file: String, announced: u64 },
    #[error("snapshot stream ended with file {file} at {got} of {announced} bytes")]
    TooShort { file: String, got: u64, announced: u64 },
    #[error("snapshot of {0} files exceeds {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("snapshot names a file for unexpected column family {0:?}")]
    UnexpectedFile(String),
    #[error("this node cannot store the snapshot's files: {0}")]
    Disk(String),
}

/// Files one snapshot may have (at 128 MiB each, far beyond any range).
const MAX_FILES: usize = 8192;

/// Distinguishes the temporary directories of concurrent streams.
static STREAMS: AtomicU64 = AtomicU64::new(0);

struct Current {
    part: u32,
    file: tokio::fs::File,
    written: u64,
    crc: crc32fast::Hasher,
}

pub struct FileReceiver {
    tmp: PathBuf,
    files: Vec<SnapshotFile>,
    current: Option<Current>,
    /// Parts fully received (file i is part i + 1).
    done: u32,
    finished: bool,
}

fn disk(e: std::io::Error) -> ReceiveError {
    ReceiveError::Disk(e.to_string())
}

impl FileReceiver {
    pub async fn start(
        root: &Path,
        range_id: u64,
        from_node: u64,
        files: Vec<SnapshotFile>,
    ) -> Result<Self, ReceiveError> {
        if files.len() > MAX_FILES {
            return Err(ReceiveError::TooManyFiles(files.len()));
        }
        if let Some(f) = files.iter().find(|f| !matches!(f.cf.as_str(), "data" | "dedupe")) {
            return Err(ReceiveError::UnexpectedFile(f.cf.clone()));
        }
        let n = STREAMS.fetch_add(1, Ordering::Relaxed);
        let tmp = root.join(format!("tmp-{range_id}-{from_node}-{}-{n}", std::process::id()));
        tokio::fs::create_dir_all(&tmp).await.map_err(disk)?;
        Ok(FileReceiver { tmp, files, current: None, done: 0, finished: false })
    }

    fn announced(&self, part: u32) -> &SnapshotFile {
        &self.files[(part - 1) as usize]
    }

    /// Takes the next piece of a file (`chunk.part` ≥ 1).
    pub async fn push(&mut self, chunk: &SnapshotChunk) -> Result<(), ReceiveError> {
        let got = crc32fast::hash(&chunk.data);
        if got != chunk.crc32 {
            return Err(ReceiveError::Damaged { got, sent: chunk.crc32 });
        }
        if self.current.as_ref().is_some_and(|c| c.part != chunk.part) {
            self.close_current().await?;
        }
        if self.current.is_none() {
            let expected = self.done + 1;
            if chunk.part != expected || expected as usize > self.files.len() {
                return Err(ReceiveError::OutOfOrder { got: chunk.part, expected });
            }
            let path = self.tmp.join(file_name(expected as usize - 1, &self.announced(expected).cf));
            let file = tokio::fs::File::create(&path).await.map_err(disk)?;
            self.current = Some(Current { part: expected, file, written: 0, crc: crc32fast::Hasher::new() });
        }
        let Some(c) = self.current.as_mut() else { return Ok(()) };
        let announced = self.files[(c.part - 1) as usize].clone();
        if c.written + chunk.data.len() as u64 > announced.size {
            return Err(ReceiveError::TooLong { file: announced.cf, announced: announced.size });
        }
        c.file.write_all(&chunk.data).await.map_err(disk)?;
        c.crc.update(&chunk.data);
        c.written += chunk.data.len() as u64;
        Ok(())
    }

    async fn close_current(&mut self) -> Result<(), ReceiveError> {
        let Some(mut c) = self.current.take() else { return Ok(()) };
        let announced = self.announced(c.part).clone();
        if c.written != announced.size {
            return Err(ReceiveError::TooShort { file: announced.cf, got: c.written, announced: announced.size });
        }
        let got = c.crc.finalize();
        if got != announced.crc32 {
            return Err(ReceiveError::FileDamaged { file: announced.cf, got, sent: announced.crc32 });
        }
        c.file.flush().await.map_err(disk)?;
        c.file.sync_all().await.map_err(disk)?;
        self.done = c.part;
        Ok(())
    }

    /// Checks that every announced file arrived whole, then moves them to the
    /// directory the store installs the snapshot at (term, index) from.
    pub async fn finish(mut self, root: &Path, range_id: u64, term: u64, index: u64) -> Result<PathBuf, ReceiveError> {
        self.close_current().await?;
        if (self.done as usize) < self.files.len() {
            let f = self.announced(self.done + 1).clone();
            return Err(ReceiveError::TooShort { file: f.cf, got: 0, announced: f.size });
        }
        let dir = received_dir(root, range_id, term, index);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            // The same snapshot arrived before (a resend after a broken stream) and the
            // store may be ingesting it now: that copy stays, this one goes (`Drop`).
            return Ok(dir);
        }
        tokio::fs::rename(&self.tmp, &dir).await.map_err(disk)?;
        // The rename must be durable before the store records the pending ingest.
        tokio::fs::File::open(root).await.map_err(disk)?.sync_all().await.map_err(disk)?;
        self.finished = true;
        Ok(dir)
    }
}

impl Drop for FileReceiver {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(part: u32, data: &[u8]) -> SnapshotChunk {
        SnapshotChunk { part, data: data.to_vec(), crc32: crc32fast::hash(data), ..Default::default() }
    }

    fn announce(cf: &str, data: &[u8]) -> SnapshotFile {
        SnapshotFile { cf: cf.into(), size: data.len() as u64, crc32: crc32fast::hash(data) }
    }

    #[tokio::test]
    async fn files_arrive_whole_and_checked_or_leave_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (vec![1u8; 3000], vec![2u8; 10]);
        let files = vec![announce("data", &a), announce("dedupe", &b)];

        let mut r = FileReceiver::start(root.path(), 7, 2, files.clone()).await.unwrap();
        r.push(&piece(1, &a[..1000])).await.unwrap();
        r.push(&piece(1, &a[1000..])).await.unwrap();
        r.push(&piece(2, &b)).await.unwrap();
        let dir = r.finish(root.path(), 7, 3, 40).await.unwrap();
        assert_eq!(dir, received_dir(root.path(), 7, 3, 40));
        assert_eq!(std::fs::read(dir.join(file_name(0, "data"))).unwrap(), a);
        assert_eq!(std::fs::read(dir.join(file_name(1, "dedupe"))).unwrap(), b);
        let leftovers = |root: &Path| std::fs::read_dir(root).unwrap().flatten().filter(|e| e.path() != dir).count();
        assert_eq!(leftovers(root.path()), 0);

        // The same snapshot again (a resend): the copy in place is kept, the new one dropped.
        let mut again = FileReceiver::start(root.path(), 7, 2, files.clone()).await.unwrap();
        again.push(&piece(1, &a)).await.unwrap();
        again.push(&piece(2, &b)).await.unwrap();
        std::fs::write(dir.join("marker"), b"the copy in place").unwrap();
        assert_eq!(again.finish(root.path(), 7, 3, 40).await.unwrap(), dir);
        assert!(dir.join("marker").exists(), "the copy in place was replaced");
        assert_eq!(leftovers(root.path()), 0);

        // A piece damaged on the way.
        let mut r = FileReceiver::start(root.path(), 7, 2, files.clone()).await.unwrap();
        let mut bad = piece(1, &a);
        bad.data[5] ^= 1;
        assert!(matches!(r.push(&bad).await, Err(ReceiveError::Damaged { .. })));
        drop(r);
        assert_eq!(leftovers(root.path()), 0, "a refused stream leaves nothing behind");

        // A file damaged before it was sent: every piece is sound, the file is not.
        let mut rotten = a.clone();
        rotten[2999] ^= 1;
        let mut r = FileReceiver::start(root.path(), 7, 2, files.clone()).await.unwrap();
        r.push(&piece(1, &rotten)).await.unwrap();
        assert!(matches!(r.push(&piece(2, &b)).await, Err(ReceiveError::FileDamaged { .. })));
        drop(r);

        // Parts out of order, a file longer or shorter than announced, a file missing.
        let mut r = FileReceiver::start(root.path(), 7, 2, files.clone()).await.unwrap();
        assert!(matches!(r.push(&piece(2, &b)).await, Err(ReceiveError::OutOfOrder { got: 2, expected: 1 })));
        drop(r);
        let mut r = FileReceiver::start(root.path(), 7, 2, files.clone()).await.unwrap();
        r.push(&piece(1, &a)).await.unwrap();
        assert!(matches!(r.push(&piece(1, &[0])).await, Err(ReceiveError::TooLong { .. })));
        drop(r);
        let mut r = FileReceiver::start(root.path(), 7, 2, files.clone()).await.unwrap();
        r.push(&piece(1, &a[..10])).await.unwrap();
        assert!(matches!(r.finish(root.path(), 7, 3, 41).await, Err(ReceiveError::TooShort { .. })));
        let mut r = FileReceiver::start(root.path(), 7, 2, files.clone()).await.unwrap();
        r.push(&piece(1, &a)).await.unwrap();
        assert!(matches!(r.finish(root.path(), 7, 3, 42).await, Err(ReceiveError::TooShort { .. })));
        let odd = vec![SnapshotFile { cf: "raft_log".into(), size: 1, crc32: 0 }];
        assert!(matches!(FileReceiver::start(root.path(), 7, 2, odd).await, Err(ReceiveError::UnexpectedFile(_))));
        assert_eq!(leftovers(root.path()), 0, "refused streams leave nothing behind");
        assert!(!received_dir(root.path(), 7, 3, 41).exists() && !received_dir(root.path(), 7, 3, 42).exists());
    }
}
