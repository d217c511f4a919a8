//! Streaming a 1 GiB object through put and get keeps this process's peak
//! RSS bounded (measured from /proc/self/status). Its own test binary, so no
//! other test's memory counts.

mod common;

use std::error::Error;

use futures::StreamExt;
use hutch_api::audit::{Actor, AuditEvent};
use hutch_api::db::Db;
use hutch_api::store::{Backend, ByteStream, DatasetId, Expect, NewDataset, ObjectKey};
use sha2::{Digest, Sha256};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

const CHUNK: usize = 1 << 20;
const CHUNKS: usize = 1024; // 1 GiB
const MAX_GROWTH_KIB: u64 = 200 * 1024;

/// Peak resident set size (VmHWM) in KiB.
fn vm_hwm_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed VmHWM")?
        .parse()?;
    Ok(kib)
}

fn chunk(i: usize) -> Vec<u8> {
    let mut c = vec![0u8; CHUNK];
    for (j, b) in c.iter_mut().enumerate().step_by(4096) {
        *b = (i.wrapping_mul(31).wrapping_add(j / 4096)) as u8;
    }
    c
}

/// 1 GiB generated on the fly, one 1 MiB chunk at a time.
fn generated() -> ByteStream {
    futures::stream::iter(0..CHUNKS)
        .map(|i| Ok(chunk(i)))
        .boxed()
}

fn expected_sha256() -> String {
    let mut h = Sha256::new();
    for i in 0..CHUNKS {
        h.update(chunk(i));
    }
    hex::encode(h.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_object_streams_through_with_bounded_memory() -> Result {
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path().join("hutch.db")).await?;
    let (_, store) = common::stores(&db, dir.path()).await?;
    let ds = DatasetId::new("big")?;
    let ev = || AuditEvent::new(Actor::daemon(), "", "");
    store
        .create_dataset(
            ev(),
            NewDataset {
                id: Some(ds.clone()),
                name: "big".into(),
                ..NewDataset::default()
            },
        )
        .await?;
    let key = ObjectKey::new("one-gib.bin")?;
    let expected = expected_sha256();

    let before = vm_hwm_kib()?;
    let put = store
        .put_object(ev(), &ds, &key, Expect::Absent, None, generated())
        .await?;
    assert_eq!(put.value.size, (CHUNK * CHUNKS) as u64);
    assert_eq!(put.value.sha256.as_deref(), Some(expected.as_str()));

    let (info, mut content) = store.get_object(&ds, &key, None).await?;
    assert_eq!(info.size, (CHUNK * CHUNKS) as u64);
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(c) = content.next().await {
        let c = c?;
        n += c.len() as u64;
        h.update(&c);
    }
    assert_eq!(n, (CHUNK * CHUNKS) as u64);
    assert_eq!(hex::encode(h.finalize()), expected);
    let after = vm_hwm_kib()?;
    let growth = after.saturating_sub(before);
    println!("1 GiB put+get: peak RSS {before} KiB -> {after} KiB (growth {growth} KiB)");
    assert!(
        growth < MAX_GROWTH_KIB,
        "peak RSS grew by {growth} KiB streaming 1 GiB (bound {MAX_GROWTH_KIB} KiB)"
    );
    Ok(())
}
