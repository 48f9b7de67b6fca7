//! A few threads that run queued jobs and sleep while there are none.
//!
//! A rayon pool spins and yields for a while after each job before it
//! sleeps. Where jobs come one at a time, thousands a second (a seal per
//! small file closed), that spinning takes a core from the very
//! application and FUSE threads the jobs serve: on a 2-core node the seal
//! threads used more CPU idling than sealing.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The threads end once the pool is dropped and the queue is empty.
pub struct Background {
    queue: Mutex<Sender<Job>>,
}

impl Background {
    /// `threads` threads named `name-0`, `name-1`, …
    pub fn start(name: &str, threads: usize) -> io::Result<Background> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || work(&rx))?;
        }
        Ok(Background {
            queue: Mutex::new(tx),
        })
    }

    /// Queue `job`; it runs on the first free thread.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        let tx = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // The receivers live as long as any thread does, and the threads
        // only leave once this sender is gone: the send cannot fail.
        let _ = tx.send(Box::new(job));
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        match job {
            // A panicking job must not take the thread (and every later
            // job queued behind it) with it.
            Ok(job) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn every_job_runs_even_after_one_panics() {
        let pool = Background::start("bg-test", 2).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        pool.spawn(|| panic!("a job that panics"));
        for _ in 0..100 {
            let done = done.clone();
            pool.spawn(move || {
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let t = Instant::now();
        while done.load(Ordering::SeqCst) < 100 && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(done.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn jobs_run_on_the_named_threads() {
        let pool = Background::start("bg-named", 1).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.spawn(move || {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let name = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(name.as_deref(), Some("bg-named-0"));
    }
}
