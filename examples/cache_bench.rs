//! The layer-cache side of `bench/cache.sh`: push one published layer of a conf
//! root to a registry, or pull it into another conf root, timed.
//!
//! ```text
//! cargo build --release --example cache_bench
//! target/release/examples/cache_bench push CONF_ROOT KEY REF         # prints seconds
//! target/release/examples/cache_bench pull CONF_ROOT KEY REF          # prints seconds
//! ```
//!
//! `pull` publishes the layer in CONF_ROOT's store as a build would (download,
//! digest check, unpack, publish); CONF_ROOT must not have it yet. The metadata
//! wanted is the pushed layer's, read back from the registry's own check.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use gentree_fs::cache::{Cache, CacheRef};
use gentree_fs::layers::store::{BuildKey, Store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(secs) => {
            println!("{secs:.3}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cache_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<f64, String> {
    let (op, conf, key, r) = match args {
        [_, op, conf, key, r, ..] => (op.as_str(), Path::new(conf), key, r),
        _ => return Err("usage: cache_bench push|pull CONF_ROOT KEY REF".into()),
    };
    let key = BuildKey::parse(key).ok_or("KEY is not a layer key")?;
    let cache = Cache::open(CacheRef::parse(r)?);
    let store = Store::open(conf).map_err(|e| e.to_string())?;
    let started = Instant::now();
    match op {
        "push" => {
            let layer = store
                .lookup(&key)
                .map_err(|e| e.to_string())?
                .ok_or("no such layer")?;
            cache.push(&layer).map_err(|e| e.to_string())?;
        }
        "pull" => {
            let meta_path = conf.join("want.json");
            let text =
                std::fs::read(&meta_path).map_err(|e| format!("{}: {e}", meta_path.display()))?;
            let want = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
            let mapping = gentree_fs::builder::namespace::current_mapping();
            let (uid, gid) = mapping.host_root();
            let host = gentree_fs::layers::ownership::HostOwner { uid, gid };
            cache
                .fetch(&store, &want, mapping.store_owners(), host)
                .map_err(|e| gentree_fs::cache::error_text(&e))?
                .ok_or("not in the cache")?;
        }
        _ => return Err(format!("unknown operation {op}")),
    }
    Ok(started.elapsed().as_secs_f64())
}
