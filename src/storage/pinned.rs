//! A consistent read-only view of the whole engine at one instant, owned so it
//! can travel to another thread: snapshot generation reads a range from it
//! while the store keeps writing. Also the two SST file operations snapshots
//! need: writing a span of the view to a file, and ingesting files.

use super::engine::{format_options, Backend};
use super::sim_disk::SimDisk;
use super::{Cf, Engine};
use anyhow::{bail, Context, Result};
use rocksdb::{
    DBRawIteratorWithThreadMode, IngestExternalFileOptions, ReadOptions, SnapshotWithThreadMode, SstFileWriter, DB,
};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct PinnedView {
    spans: Vec<PinnedSpan>,
    inner: Inner,
}

/// One span of one column family, as `Engine::pin` was asked for it.
#[derive(Clone, Debug)]
pub struct PinnedSpan {
    pub cf: Cf,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

type RawIter = DBRawIteratorWithThreadMode<'static, DB>;

enum Inner {
    /// The iterators are created when the view is pinned: an iterator holds the
    /// files it started on, so compactions finishing later (whose filters drop
    /// records even under a snapshot) cannot thin what the view reads. Fields
    /// drop in order: iterators, then the snapshot, then the handle they borrow.
    Rocks { iters: Vec<Option<RawIter>>, _snap: SnapshotWithThreadMode<'static, DB>, _db: Arc<DB> },
    /// The simulator generates snapshots at once, on the store's turn, so its
    /// view is the live disk.
    Sim(Arc<SimDisk>),
}

/// One SST file written from a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenSst {
    pub size: u64,
    pub crc32: u32,
    pub records: u64,
}

impl Engine {
    /// Pins the engine's current state of `spans`; cheap (RocksDB keeps the
    /// versions and files alive until the view is dropped).
    pub fn pin(&self, spans: Vec<PinnedSpan>) -> PinnedView {
        let inner = match self.backend() {
            Backend::Rocks(db) => {
                // SAFETY (both transmutes): the snapshot and the iterators borrow the DB,
                // which `Inner::Rocks` keeps alive through its own `Arc` and drops last.
                let snap: SnapshotWithThreadMode<'static, DB> = unsafe { std::mem::transmute(db.snapshot()) };
                let iters = spans
                    .iter()
                    .map(|s| {
                        let mut ro = ReadOptions::default();
                        ro.set_snapshot(&snap);
                        if !s.end.is_empty() {
                            ro.set_iterate_upper_bound(s.end.clone());
                        }
                        ro.set_total_order_seek(true);
                        // A bulk read must not evict the blocks serving live traffic.
                        ro.fill_cache(false);
                        let it = db.raw_iterator_cf_opt(self.cf(s.cf), ro);
                        let it: RawIter = unsafe { std::mem::transmute(it) };
                        Some(it)
                    })
                    .collect();
                Inner::Rocks { iters, _snap: snap, _db: db.clone() }
            }
            Backend::Sim { disk, .. } => Inner::Sim(disk.clone()),
        };
        PinnedView { spans, inner }
    }

    /// Adds SST files to their column families, moving them into the database.
    /// Their records shadow every older record, range deletions included.
    pub fn ingest(&self, files: &[(Cf, PathBuf)]) -> Result<()> {
        let Backend::Rocks(db) = self.backend() else { bail!("SST ingestion on the simulator's disk") };
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        for (cf, path) in files {
            db.ingest_external_file_cf_opts(self.cf(*cf), &opts, vec![path])
                .with_context(|| format!("ingesting {} into {}", path.display(), cf.name()))?;
        }
        Ok(())
    }
}

impl PinnedView {
    pub fn spans(&self) -> &[PinnedSpan] {
        &self.spans
    }

    /// Reads span `i` as it was when pinned, until `f` returns false. Each span
    /// can be read once.
    pub fn scan(&mut self, i: usize, mut f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let span = self.spans.get(i).context("no such pinned span")?;
        let it = match &mut self.inner {
            Inner::Sim(disk) => {
                disk.scan(span.cf, &span.start, &span.end, f);
                return Ok(());
            }
            Inner::Rocks { iters, .. } => iters.get_mut(i).and_then(Option::take).context("pinned span read twice")?,
        };
        let mut it = it;
        it.seek(&span.start);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            if !f(k, v) {
                return Ok(());
            }
            it.next();
        }
        it.status().context("reading a pinned view")
    }

    /// Writes span `i` to new SST files, each closed once it passes `max_file_bytes`,
    /// at the paths `next_path` gives; none when the span holds nothing. Memory
    /// stays bounded whatever the span's size: records stream from the iterator
    /// to the file, and a file's index and filter blocks are capped by its size.
    pub fn write_ssts(
        &mut self,
        i: usize,
        max_file_bytes: u64,
        mut next_path: impl FnMut() -> PathBuf,
    ) -> Result<Vec<(PathBuf, WrittenSst)>> {
        if matches!(self.inner, Inner::Sim(_)) {
            bail!("SST files on the simulator's disk");
        }
        let cf = self.spans.get(i).context("no such pinned span")?.cf;
        let opts = format_options(cf, None);
        let mut written = Vec::new();
        let mut open: Option<(SstFileWriter<'_>, PathBuf, u64)> = None;
        let mut failed: Option<anyhow::Error> = None;
        self.scan(i, |k, v| {
            let step = (|| -> Result<()> {
                if open.is_none() {
                    let path = next_path();
                    let w = SstFileWriter::create(&opts);
                    w.open(&path).with_context(|| format!("creating {}", path.display()))?;
                    open = Some((w, path, 0));
                }
                if let Some((w, path, records)) = open.as_mut() {
                    w.put(k, v).with_context(|| format!("writing {}", path.display()))?;
                    *records += 1;
                    if w.file_size() >= max_file_bytes {
                        if let Some((w, path, records)) = open.take() {
                            written.push(close(w, path, records)?);
                        }
                    }
                }
                Ok(())
            })();
            match step {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some((w, path, records)) = open.take() {
            written.push(close(w, path, records)?);
        }
        Ok(written)
    }
}

fn close(mut w: SstFileWriter<'_>, path: PathBuf, records: u64) -> Result<(PathBuf, WrittenSst)> {
    w.finish().with_context(|| format!("finishing {}", path.display()))?;
    let (size, crc32) = file_crc32(&path)?;
    Ok((path, WrittenSst { size, crc32, records }))
}

/// Size and CRC-32 of a file, read in bounded pieces.
pub fn file_crc32(path: &Path) -> Result<(u64, u32)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize()))
}
