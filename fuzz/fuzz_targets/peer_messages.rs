//! Traffic from a peer, as the internal service receives it: Raft batches
//! (cluster id, envelope count, addressing, Raft message decoding) and
//! streamed snapshots (chunk reassembly against the announced length, then
//! decoding of the snapshot payload). Nothing may panic or over-allocate.
#![no_main]

use cairn_core::peer;
use cairn_proto::internal::{RaftBatch, SnapshotChunk, SnapshotData};
use libfuzzer_sys::fuzz_target;
use prost::Message;

const MAX_SNAPSHOT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    if selector % 2 == 0 {
        let Ok(batch) = RaftBatch::decode(body) else { return };
        if peer::check_batch("cluster", &batch).is_err() {
            return;
        }
        for env in &batch.envelopes {
            if let Ok(msg) = peer::decode_raft_message(env) {
                // A sender known to live on another node only passes if raft-rs relays its type.
                if peer::check_sender(&msg, Some(batch.from_node ^ 1), batch.from_node).is_ok() {
                    assert!(!peer::names_its_link(&msg));
                }
            }
        }
    } else {
        // Frames: u16 length, then a SnapshotChunk.
        let mut frames = Vec::new();
        let mut rest = body;
        while rest.len() >= 2 {
            let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
            frames.push(&rest[2..2 + n]);
            rest = &rest[2 + n..];
        }
        // Mostly chunks with a valid checksum, so the fuzzer gets past it to the reassembly.
        let fix_checksums = selector & 0x80 == 0;
        let mut chunks = frames.into_iter().filter_map(|f| SnapshotChunk::decode(f).ok()).map(|mut c| {
            if fix_checksums {
                c.crc32 = crc32fast::hash(&c.data);
            }
            c
        });
        let Some(first) = chunks.next() else { return };
        let Ok(mut snap) = peer::SnapshotReassembly::start(first, MAX_SNAPSHOT) else { return };
        for c in chunks {
            if snap.push(&c).is_err() {
                return;
            }
        }
        if let Ok((_, bytes)) = snap.finish() {
            assert!(bytes.len() <= MAX_SNAPSHOT);
            use prost011::Message as _;
            if let Ok(msg) = raft::eraftpb::Message::decode(bytes.as_slice()) {
                let _ = SnapshotData::decode(msg.get_snapshot().get_data());
            }
        }
    }
});
