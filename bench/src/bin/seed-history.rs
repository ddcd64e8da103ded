//! `seed-history`: tops a server's database up to a history of N finished invocations (in
//! commands of 1,000, created over the last hours), for benchmarks of a server with a long
//! history. Run it while the server is stopped.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Fill a Drover server's database with command history")]
struct Args {
    /// The server's database (DATA_DIR/drover.db).
    #[arg(long)]
    db: PathBuf,
    /// Invocations the history should hold (a multiple of --per-command).
    #[arg(long)]
    invocations: usize,
    /// Invocations per command.
    #[arg(long, default_value_t = 1000)]
    per_command: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let per = args.per_command.max(1);
    let commands = args.invocations.div_ceil(per);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let started = Instant::now();
    let store = drover_store::SqliteStore::open(&args.db)
        .with_context(|| format!("opening {}", args.db.display()))?;
    // A second apart, ending now: all within any default retention.
    let added = store.seed_history(commands, per, now - commands as i64)?;
    println!(
        "SEEDED added={added} commands={commands} per_command={per} ms={}",
        started.elapsed().as_millis()
    );
    Ok(())
}
