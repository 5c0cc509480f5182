//! What layer keys and layer normalisation cost, for `bench/keys.sh` and
//! `bench/normalize.sh` (a benchmark driver, not a tool).
//!
//! ```text
//! cargo build --release --example key_cost
//! key_cost repos REPOS_DIR CONF_ROOT N   # shared digests, then N (or `all`) package
//!                                        # digests: times as JSON
//! key_cost normalize LAYER EPOCH         # normalise + clamp one layer tree in place
//! key_cost seed SEED_DIR CONF_ROOT       # the seed identity (cache in CONF_ROOT)
//! key_cost closure REPOS_DIR CONF_ROOT N # the package set of a layer naming N packages
//! ```
//!
//! `repos` uses the same code as a build (`builder::repos`), with the digest cache in
//! CONF_ROOT (delete `CONF_ROOT/state/digest-cache` for a cold run).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use gentree_fs::builder::repos::Repos;
use gentree_fs::layers::normalize;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["repos", dir, conf, n] => repos(Path::new(dir), Path::new(conf), n),
        ["normalize", layer, epoch] => norm(Path::new(layer), epoch),
        ["seed", dir, conf] => seed(Path::new(dir), Path::new(conf)),
        ["closure", dir, conf, n] => closure(Path::new(dir), Path::new(conf), n),
        _ => Err("usage: key_cost repos REPOS_DIR CONF_ROOT N | normalize LAYER EPOCH | seed DIR CONF_ROOT | closure REPOS_DIR CONF_ROOT N".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("key_cost: {e}");
            ExitCode::FAILURE
        }
    }
}

type R = Result<(), Box<dyn std::error::Error>>;

/// Every `category/package` directory of the repository `name` under `dir`.
fn all_packages(dir: &Path) -> Result<Vec<String>, std::io::Error> {
    let cats = std::fs::read_to_string(dir.join("profiles/categories"))?;
    let mut out = Vec::new();
    for c in cats.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(rd) = std::fs::read_dir(dir.join(c)) else {
            continue;
        };
        for e in rd {
            let e = e?;
            if e.file_type()?.is_dir() {
                out.push(format!("{c}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn repos(dir: &Path, conf: &Path, n: &str) -> R {
    let t = Instant::now();
    let mut repos = Repos::scan(dir, conf)?;
    let shared = repos.shared_digests()?;
    let shared_s = t.elapsed().as_secs_f64();
    let name = shared
        .first()
        .map(|(n, _)| n.clone())
        .ok_or("no repository")?;
    let pkgs = all_packages(&dir.join(&name))?;
    let n: usize = if n == "all" { pkgs.len() } else { n.parse()? };
    // Every (len / n)-th package: a layer's worth spread over the tree.
    let step = (pkgs.len() / n.max(1)).max(1);
    let some: BTreeSet<(String, String)> = pkgs
        .iter()
        .step_by(step)
        .take(n)
        .map(|p| (name.clone(), p.clone()))
        .collect();
    let t = Instant::now();
    repos.inputs(&some)?;
    let packages_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    repos.save_cache();
    let save_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"shared_s\": {shared_s:.4}, \"packages\": {}, \"packages_s\": {packages_s:.4}, \"save_s\": {save_s:.4}}}",
        some.len()
    );
    Ok(())
}

fn closure(dir: &Path, conf: &Path, n: &str) -> R {
    let n: usize = n.parse()?;
    let mut repos = Repos::scan(dir, conf)?;
    let name = repos.names().next().ok_or("no repository")?.to_owned();
    let pkgs = all_packages(&dir.join(&name))?;
    let step = (pkgs.len() / n.max(1)).max(1);
    let roots: Vec<&str> = pkgs
        .iter()
        .skip(step / 2)
        .step_by(step)
        .take(n)
        .map(String::as_str)
        .collect();
    let t = Instant::now();
    let set = repos.closure(roots)?;
    let scan_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    repos.inputs(&set)?;
    let digest_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"packages\": {}, \"scan_s\": {scan_s:.4}, \"digest_s\": {digest_s:.4}}}",
        set.len()
    );
    Ok(())
}

fn seed(dir: &Path, conf: &Path) -> R {
    let t = Instant::now();
    let id = gentree_fs::layers::seed::identity::refresh(conf, "bench", dir)?;
    println!(
        "{{\"seconds\": {:.4}, \"digest\": \"{}\"}}",
        t.elapsed().as_secs_f64(),
        &id.digest[..12]
    );
    Ok(())
}

fn norm(layer: &Path, epoch: &str) -> R {
    let st = normalize::normalize_layer(layer, epoch.parse()?)?;
    println!(
        "{{\"entries\": {}, \"clamped\": {}, \"records_rewritten\": {}, \"removed\": {}, \"seconds\": {:.4}}}",
        st.entries,
        st.clamped,
        st.records_rewritten,
        st.removed,
        st.micros as f64 / 1e6
    );
    Ok(())
}
