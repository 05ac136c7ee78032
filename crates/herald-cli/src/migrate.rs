//! `herald migrate --from DATA_DIR --to postgres://...`: move an embedded
//! installation onto a shared PostgreSQL, with a progress bar and an exact
//! count at the end.

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct MigrateArgs {
    /// Data directory of the embedded installation (stop its server first)
    #[arg(long)]
    from: PathBuf,
    /// PostgreSQL URL of an empty database, e.g. postgres://herald@db:5432/herald
    #[arg(long)]
    to: String,
}

pub(crate) async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    if !(args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")) {
        bail!("--to must be a postgres:// URL");
    }
    let db = args.from.join("herald.db");
    if !db.exists() {
        bail!(
            "{} holds no Herald database (herald.db); pass the data dir of `herald serve`",
            args.from.display()
        );
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let bar = pb.clone();
    let progress = move |table: &str, done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(table.to_owned());
    };
    let copied = herald_storage::copy::sqlite_to_postgres(&db, &args.to, &progress)
        .await
        .context("migration failed; nothing was committed to the target")?;
    pb.finish_and_clear();
    let total: u64 = copied.iter().map(|t| t.rows).sum();
    let rows = copied
        .iter()
        .filter(|t| t.rows > 0)
        .map(|t| (t.table.clone(), t.rows.to_string()))
        .collect::<Vec<_>>();
    crate::output::print_table(&rows, crate::output::pairs(["TABLE", "ROWS"]));
    println!(
        "Copied {total} rows in {} tables from {} to PostgreSQL.",
        copied.len(),
        args.from.display()
    );
    let key = args.from.join("master.key");
    println!(
        "Secrets stay sealed: start every node with the same master key ({} or HERALD_MASTER_KEY)\n\
         and `--database {}`.",
        key.display(),
        redact(&args.to)
    );
    Ok(())
}

/// The URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
