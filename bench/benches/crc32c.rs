//! crc32c throughput: the per-chunk checksum is computed on every byte the
//! engine moves, so it must stay well above the disk's speed. The design
//! target is >= 8 GB/s on one core with the hardware instruction.
//!
//! Run: `cargo bench -p ckpt-bench --bench crc32c`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use libckpt::chunk::ChunkHasher;
use rand::{rngs::StdRng, RngCore, SeedableRng};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Random rather than zeroed bytes, so a checksum that shortcut runs of
/// zeros could not flatter itself.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(0x636b_7074).fill_bytes(&mut v);
    v
}

fn label(size: usize) -> String {
    if size >= MIB {
        format!("{}MiB", size / MIB)
    } else {
        format!("{}KiB", size / KIB)
    }
}

fn crc32c_raw(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    let buf = random_bytes(16 * MIB);
    for size in [4 * KIB, 64 * KIB, MIB, 16 * MIB] {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(label(size)),
            &buf[..size],
            |b, data| b.iter(|| crc32c::crc32c(black_box(data))),
        );
    }
    g.finish();
}

/// The shape the engine feeds the hasher: one 1 MiB I/O buffer at a time,
/// 1 MiB chunks, so this includes the chunk bookkeeping and the Vec growth.
fn chunk_hasher(c: &mut Criterion) {
    const TOTAL: usize = 64 * MIB;
    const BUF: usize = MIB;
    let mut g = c.benchmark_group("chunk_hasher");
    let data = random_bytes(TOTAL);
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function("64MiB/buf=1MiB/chunk=1MiB", |b| {
        b.iter(|| {
            let mut h = ChunkHasher::new(MIB as u64);
            for piece in black_box(&data[..]).chunks(BUF) {
                h.update(piece);
            }
            h.finish()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short on purpose: this runs on a shared 2-core machine next to other
    // builds; 20 samples over ~3 s give a stable median for a pure CPU loop.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = crc32c_raw, chunk_hasher
}
criterion_main!(benches);
