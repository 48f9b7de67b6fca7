//! The private data of an RDMA connection: what each side tells the other
//! in the rdma_cm CONNECT request and ACCEPT reply, before a single frame
//! crosses.
//!
//! Each side says how many receive buffers it keeps posted (the credits the
//! peer starts with) and how large each is (the largest message the peer
//! may send). Both are bounded here, on the parse, because they size the
//! peer's own send path: a hostile peer must not make us allocate or
//! post work requests without limit.
//!
//! Layout, big-endian, 12 bytes; the verbs layer pads private data with
//! zeros (to 56 bytes on RoCE), so trailing bytes are ignored:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `CKRD` |
//! | 4 | version (1) |
//! | 5 | reserved, 0 |
//! | 6..8 | receive buffers posted |
//! | 8..12 | size of each receive buffer |

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"CKRD";
pub const VERSION: u8 = 1;
pub const LEN: usize = 12;

/// Smallest receive buffer a peer may announce: below a frame header plus
/// a useful payload, a transfer would be all per-message overhead.
pub const MIN_BUF: u32 = 4 << 10;
/// Largest: bounds what one message may make the receiver hold.
pub const MAX_BUF: u32 = 16 << 20;
/// Two lets one message be in flight while the last one is read.
pub const MIN_BUFS: u16 = 2;
pub const MAX_BUFS: u16 = 4096;

/// What one side announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    pub recv_bufs: u16,
    pub buf_size: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PrivateDataError {
    #[error("{len} bytes of private data; a ckptfs peer sends at least {LEN}")]
    Short { len: usize },
    #[error("the private data does not start with `CKRD`: the peer is not ckptfs")]
    Magic,
    #[error(
        "the peer speaks ckptfs RDMA version {0}; this build speaks {VERSION}: \
         upgrade ckptfs on the older side"
    )]
    Version(u8),
    #[error("the peer announces {0} receive buffers; allowed: {MIN_BUFS} to {MAX_BUFS}")]
    Buffers(u16),
    #[error("the peer announces {0}-byte receive buffers; allowed: {MIN_BUF} to {MAX_BUF}")]
    BufSize(u32),
}

impl Announce {
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[6..8].copy_from_slice(&self.recv_bufs.to_be_bytes());
        out[8..12].copy_from_slice(&self.buf_size.to_be_bytes());
        out
    }

    pub fn parse(data: &[u8]) -> Result<Announce, PrivateDataError> {
        let Some(head) = data.get(..LEN) else {
            return Err(PrivateDataError::Short { len: data.len() });
        };
        if head[..4] != MAGIC {
            return Err(PrivateDataError::Magic);
        }
        if head[4] != VERSION {
            return Err(PrivateDataError::Version(head[4]));
        }
        let recv_bufs = u16::from_be_bytes([head[6], head[7]]);
        let buf_size = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        if !(MIN_BUFS..=MAX_BUFS).contains(&recv_bufs) {
            return Err(PrivateDataError::Buffers(recv_bufs));
        }
        if !(MIN_BUF..=MAX_BUF).contains(&buf_size) {
            return Err(PrivateDataError::BufSize(buf_size));
        }
        Ok(Announce {
            recv_bufs,
            buf_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_verbs_padding() {
        let a = Announce {
            recv_bufs: 16,
            buf_size: 256 << 10,
        };
        let mut padded = a.encode().to_vec();
        padded.resize(56, 0);
        assert_eq!(Announce::parse(&padded), Ok(a));
    }

    #[test]
    fn refuses_what_it_cannot_bound() {
        let ok = Announce {
            recv_bufs: 16,
            buf_size: 64 << 10,
        }
        .encode();
        assert_eq!(
            Announce::parse(&ok[..11]),
            Err(PrivateDataError::Short { len: 11 })
        );
        let mut bad = ok;
        bad[0] = b'X';
        assert_eq!(Announce::parse(&bad), Err(PrivateDataError::Magic));
        let mut bad = ok;
        bad[4] = 9;
        assert_eq!(Announce::parse(&bad), Err(PrivateDataError::Version(9)));
        let mut bad = ok;
        bad[6..8].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(Announce::parse(&bad), Err(PrivateDataError::Buffers(1)));
        let mut bad = ok;
        bad[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Announce::parse(&bad),
            Err(PrivateDataError::BufSize(u32::MAX))
        );
    }
}
