//! The DR frame parser sees whatever arrives on the server's port (before
//! and after authentication) and whatever a server, maybe of another
//! version, answers. It must never panic nor accept a message over its
//! bound, and what it accepts must survive being framed again: both sides
//! re-frame what they relay. The bodies frames carry (chunk blobs, JSON
//! control messages) are decoded here too, with the same round-trip rule.

#![no_main]

use libckpt::dr::blob;
use libckpt::dr::frame::{read_message, write_message, FrameError, Message};
use libckpt::dr::proto::{
    self, Challenge, ChunkRef, ChunkStored, Deleted, Empty, ErrorReply, Hello, JobRef, Jobs,
    Lacking, Missing, MsgType, Proof, SetRef, SetStored, Sets, Welcome, MAX_AUTH_MESSAGE,
};
use libckpt::dr::record::SetRecord;
use libfuzzer_sys::fuzz_target;

/// A body this build accepts must re-encode to one it accepts unchanged.
macro_rules! round_trip {
    ($t:ty, $kind:expr, $payload:expr) => {{
        if let Ok(v) = proto::decode::<$t>($kind, $payload) {
            let again = proto::encode(&v);
            match proto::decode::<$t>($kind, &again) {
                Ok(w) => assert_eq!(w, v, "re-decoded {} differs", $kind),
                Err(e) => panic!("an accepted {} is refused once re-encoded: {e}", $kind),
            }
        }
    }};
}

fn bodies(m: &Message) {
    let p = &m.payload[..];
    match m.kind {
        MsgType::Hello => round_trip!(Hello, m.kind, p),
        MsgType::Challenge => round_trip!(Challenge, m.kind, p),
        MsgType::Proof => round_trip!(Proof, m.kind, p),
        MsgType::Welcome => round_trip!(Welcome, m.kind, p),
        MsgType::ListJobs => round_trip!(Empty, m.kind, p),
        MsgType::ListSets => round_trip!(JobRef, m.kind, p),
        MsgType::GetManifest | MsgType::GetRecord | MsgType::DeleteSet => {
            round_trip!(SetRef, m.kind, p)
        }
        MsgType::Lacking => round_trip!(Lacking, m.kind, p),
        MsgType::GetChunk => round_trip!(ChunkRef, m.kind, p),
        MsgType::Jobs => round_trip!(Jobs, m.kind, p),
        MsgType::Sets => round_trip!(Sets, m.kind, p),
        MsgType::Missing => round_trip!(Missing, m.kind, p),
        MsgType::ChunkStored => round_trip!(ChunkStored, m.kind, p),
        MsgType::SetStored => round_trip!(SetStored, m.kind, p),
        MsgType::Deleted => round_trip!(Deleted, m.kind, p),
        MsgType::Error => round_trip!(ErrorReply, m.kind, p),
        MsgType::PutChunk | MsgType::Chunk => {
            if let Ok((header, raw)) = blob::open(p) {
                assert_eq!(raw.len(), header.raw_len as usize);
            }
        }
        MsgType::PutSet | MsgType::Record => {
            if let Ok(r) = SetRecord::parse(p) {
                let bytes = r.to_bytes();
                assert_eq!(
                    SetRecord::parse(&bytes).as_ref(),
                    Ok(&r),
                    "record round trip"
                );
            }
        }
        MsgType::Manifest => {}
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the bound: the server's pre-authentication one
    // or none beyond each type's own.
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let cap = if sel & 1 == 0 {
        usize::MAX
    } else {
        MAX_AUTH_MESSAGE
    };
    let mut r = data;
    let mut msgs = Vec::new();
    while msgs.len() < 64 {
        match read_message(&mut r, "fuzz-peer", cap) {
            Ok(m) => {
                assert!(m.payload.len() <= m.kind.max_len().min(cap));
                msgs.push(m);
            }
            Err(e) => {
                assert!(
                    e.to_string().contains("fuzz-peer"),
                    "error without the peer: {e}"
                );
                break;
            }
        }
    }
    let mut out = Vec::new();
    for m in &msgs {
        write_message(&mut out, "fuzz-peer", m.kind, &m.payload)
            .unwrap_or_else(|e| panic!("an accepted {} cannot be framed again: {e}", m.kind));
        bodies(m);
    }
    let mut r = &out[..];
    for m in &msgs {
        let again = read_message(&mut r, "fuzz-peer", cap).expect("re-framed message refused");
        assert_eq!(&again, m);
    }
    assert!(matches!(
        read_message(&mut r, "fuzz-peer", cap),
        Err(FrameError::Closed { .. })
    ));
});
