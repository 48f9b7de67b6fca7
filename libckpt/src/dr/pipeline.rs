//! The receiver's requests served with chunks checked and stored in
//! parallel, and every answer still sent in the order of the requests.
//!
//! One chunk costs the receiver a zstd decompression, BLAKE3 and crc32c
//! of the raw bytes, and an O_DIRECT write that waits for the disk. Done
//! one after the other on the connection's thread, the disk wait left a
//! core idle and the sender's window full. Here the connection's thread
//! only reads frames: each `PutChunk` goes to the rayon pool, and a reply
//! thread writes the answers in order as they come. Any other request
//! first waits for the chunks before it, so a `Lacking` or a set record
//! never sees a chunk that was sent but is not stored yet (which would
//! make the client send it again).
//!
//! It needs a stream that one thread can read while another writes, as
//! every [`Stream`] allows.
//!
//! [`Stream`]: super::transport::Stream

use std::io::{BufReader, BufWriter, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use super::error::DrError;
use super::frame::{read_message, write_message, FrameError, Message};
use super::handler::Repo;
use super::proto::MsgType;
use super::transport::Io;

/// Requests read ahead of their answers. The client's own window (16
/// chunks) is the usual bound; this one caps memory whatever the client.
const AHEAD: usize = 32;

/// An answer the reply thread writes in its turn.
enum Answer {
    Ready(Message),
    Pending(Receiver<Message>),
}

/// Chunks handed to the pool and not answered yet.
#[derive(Default)]
struct InFlight {
    n: Mutex<usize>,
    zero: Condvar,
}

impl InFlight {
    /// One more chunk in flight, until the guard is dropped.
    fn start(self: &Arc<Self>) -> Counted {
        *self.n.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Counted(self.clone())
    }

    fn done(&self) {
        let mut n = self.n.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.zero.notify_all();
        }
    }

    fn wait_none(&self) {
        let mut n = self.n.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.zero.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One chunk in flight ([`InFlight::start`]); counted off when dropped.
struct Counted(Arc<InFlight>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// How the connection ended: cleanly, or with an error the server reports
/// to the peer on the writer it gets back.
pub(super) struct Ended {
    pub result: Result<(), DrError>,
    /// The reply writer, once every answer before the end is written;
    /// `None` when writing failed (the peer is gone).
    pub writer: Option<BufWriter<Io>>,
}

/// Serve requests from `r` until the peer closes or an error, answering
/// on `w`.
pub(super) fn serve(
    repo: &Arc<Repo>,
    peer: &str,
    r: &mut BufReader<Io>,
    w: BufWriter<Io>,
) -> Ended {
    let (tx, rx) = mpsc::sync_channel::<Answer>(AHEAD);
    let replies = {
        let peer = peer.to_owned();
        std::thread::Builder::new()
            .name("ckptfs-dr-reply".into())
            .spawn(move || write_in_order(rx, w, &peer))
    };
    let replies = match replies {
        Ok(h) => h,
        Err(e) => {
            return Ended {
                result: Err(DrError::Frame(FrameError::Io {
                    peer: peer.into(),
                    source: e,
                })),
                writer: None,
            }
        }
    };
    let in_flight = Arc::new(InFlight::default());
    let result = read_requests(repo, peer, r, &tx, &in_flight);
    // Nothing of this connection may still be writing to the repository
    // once it has ended (a stopped server is stopped).
    in_flight.wait_none();
    drop(tx);
    let (writer, wrote) = match replies.join() {
        Ok(Ok(w)) => (Some(w), Ok(())),
        Ok(Err(e)) => (None, Err(e)),
        Err(_) => (
            None,
            Err(DrError::Frame(FrameError::Io {
                peer: peer.into(),
                source: std::io::Error::other("the reply thread panicked"),
            })),
        ),
    };
    Ended {
        // A read error says more than the write error it caused.
        result: result.and(wrote),
        writer,
    }
}

fn read_requests(
    repo: &Arc<Repo>,
    peer: &str,
    r: &mut BufReader<Io>,
    tx: &SyncSender<Answer>,
    in_flight: &Arc<InFlight>,
) -> Result<(), DrError> {
    loop {
        let msg = match read_message(r, peer, usize::MAX) {
            Ok(m) => m,
            Err(FrameError::Closed { .. }) => return Ok(()),
            Err(e) => return Err(DrError::Frame(e)),
        };
        let next = if msg.kind == MsgType::PutChunk {
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            let (repo, peer) = (repo.clone(), peer.to_owned());
            let counted = in_flight.start();
            rayon::spawn(move || {
                // Counted off however the job ends, so the connection
                // never waits for a chunk that is gone.
                let _counted = counted;
                let _ = done_tx.send(repo.answer(&peer, &msg));
            });
            Answer::Pending(done_rx)
        } else {
            in_flight.wait_none();
            Answer::Ready(repo.answer(peer, &msg))
        };
        if tx.send(next).is_err() {
            // The reply thread stopped: its error ends the connection.
            return Ok(());
        }
    }
}

/// The reply thread: answers in the order of the requests, flushed
/// whenever the next one is not ready yet (so the client never waits on
/// an answer sitting in the buffer).
fn write_in_order(
    rx: Receiver<Answer>,
    mut w: BufWriter<Io>,
    peer: &str,
) -> Result<BufWriter<Io>, DrError> {
    while let Some(next) = next_or_flush(&rx, &mut w, peer)? {
        let reply = match next {
            Answer::Ready(m) => m,
            // The job ended without an answer (a panic in the handler,
            // where the pool does not abort): end the connection; the
            // client reconnects and asks again.
            Answer::Pending(done) => {
                next_or_flush(&done, &mut w, peer)?.ok_or_else(|| FrameError::Io {
                    peer: peer.into(),
                    source: std::io::Error::other("a chunk was never answered"),
                })?
            }
        };
        write_message(&mut w, peer, reply.kind, &reply.payload)?;
    }
    Ok(w)
}

/// The next item of `rx`, flushing `w` first when it has to wait for it
/// (and when `rx` is done: `None`).
fn next_or_flush<T>(
    rx: &Receiver<T>,
    w: &mut BufWriter<Io>,
    peer: &str,
) -> Result<Option<T>, FrameError> {
    if let Ok(t) = rx.try_recv() {
        return Ok(Some(t));
    }
    w.flush().map_err(|source| FrameError::Io {
        peer: peer.into(),
        source,
    })?;
    Ok(rx.recv().ok())
}
