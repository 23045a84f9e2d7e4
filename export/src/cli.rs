//! Options of the `amr-export` binary and its `run` entry point.

use crate::flatten::{self, Columns};
use crate::output::{CsvWriter, NdjsonWriter};
use crate::reader::{SessionReader, Target};
use crate::ExportError;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per stored message: the client's JSON.
    Ndjson,
    /// One row per sample, `data` flattened to dotted columns.
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Stream order (the gateway's receive order), written as it is read.
    Stream,
    /// By `Amr-Seq` (the robot's order), messages without seq last in stream order; the
    /// session is held in memory.
    Seq,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration '{s}': {e}"))
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if amr_proto::subjects::is_valid_prefix(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid subject prefix '{s}': dot-separated tokens of [A-Za-z0-9_-]"
        ))
    }
}

/// Export one AMR Bridge session from JetStream (stream AMR_SENSOR) as NDJSON or CSV.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "amr-export", version, about)]
pub struct Args {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "AMR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of every NATS subject (as configured on the gateways).
    #[arg(long, env = "AMR_SUBJECT_PREFIX", default_value = "amr", value_parser = parse_prefix)]
    pub subject_prefix: String,
    /// The session to export.
    #[arg(long)]
    pub session_id: String,
    /// Its device; found with the wildcard `<prefix>.sensor.*.<sessionId>` when left out.
    #[arg(long)]
    pub device_id: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: Format,
    /// Add stream and header metadata (NDJSON: `{"meta":{..},"message":..}` lines; CSV:
    /// streamSeq, receivedAt, gateway, dataCount columns).
    #[arg(long)]
    pub metadata: bool,
    /// Order of the output.
    #[arg(long, value_enum, default_value = "stream")]
    pub sort: Sort,
    /// Output file (stdout when left out).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Fail when NATS delivers nothing for this long while messages are still pending.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub subject: String,
    pub messages: u64,
    /// CSV rows (samples); equal to `messages` for NDJSON.
    pub rows: u64,
}

fn progress(quiet: bool, len: u64, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {human_pos}/{human_len} messages ({per_sec}, {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

/// A session being recorded can grow while it is read.
fn tick(pb: &ProgressBar) {
    pb.inc(1);
    if pb.length().is_some_and(|l| pb.position() > l) {
        pb.set_length(pb.position());
    }
}

/// Exports as `args` says, to `out`.
pub async fn export_to<W: Write>(
    reader: &SessionReader,
    target: &Target,
    args: &Args,
    out: W,
) -> Result<(Summary, W), ExportError> {
    if args.sort == Sort::Seq {
        return export_sorted(reader, target, args, out).await;
    }
    match args.format {
        Format::Ndjson => {
            let pb = progress(args.quiet, target.count, "export");
            let mut w = NdjsonWriter::new(out, args.metadata);
            let mut n = 0u64;
            reader
                .for_each(target, None, |r| {
                    w.write(&r)?;
                    n += 1;
                    tick(&pb);
                    Ok(())
                })
                .await?;
            pb.finish_and_clear();
            let out = w.finish()?;
            Ok((
                Summary {
                    subject: target.subject.clone(),
                    messages: n,
                    rows: n,
                },
                out,
            ))
        }
        Format::Csv => {
            // Pass 1: the union of the columns, over exactly the messages pass 2 writes.
            let pb = progress(args.quiet, target.count, "columns");
            let mut columns = Columns::new(args.metadata);
            let last = reader
                .for_each(target, None, |r| {
                    for row in flatten::rows(&r, args.metadata)? {
                        columns.observe(&row);
                    }
                    tick(&pb);
                    Ok(())
                })
                .await?;
            pb.finish_and_clear();
            let pb = progress(args.quiet, pb.position(), "export");
            let mut w = CsvWriter::new(out, columns, args.metadata)?;
            let mut n = 0u64;
            reader
                .for_each(target, Some(last), |r| {
                    w.write(&r)?;
                    n += 1;
                    tick(&pb);
                    Ok(())
                })
                .await?;
            pb.finish_and_clear();
            let rows = w.rows();
            let out = w.finish()?;
            Ok((
                Summary {
                    subject: target.subject.clone(),
                    messages: n,
                    rows,
                },
                out,
            ))
        }
    }
}

/// `--sort seq`: the whole session in memory, sorted by `Amr-Seq`, then written.
async fn export_sorted<W: Write>(
    reader: &SessionReader,
    target: &Target,
    args: &Args,
    out: W,
) -> Result<(Summary, W), ExportError> {
    let pb = progress(args.quiet, target.count, "read");
    let mut records = Vec::with_capacity(target.count as usize);
    reader
        .for_each(target, None, |r| {
            records.push(r);
            tick(&pb);
            Ok(())
        })
        .await?;
    pb.finish_and_clear();
    // Stable: equal seqs (none with seq) keep stream order.
    records.sort_by_key(|r| r.seq().map_or((1, 0), |s| (0, s)));
    let messages = records.len() as u64;
    let (rows, out) = match args.format {
        Format::Ndjson => {
            let mut w = NdjsonWriter::new(out, args.metadata);
            for r in &records {
                w.write(r)?;
            }
            (messages, w.finish()?)
        }
        Format::Csv => {
            let mut columns = Columns::new(args.metadata);
            for r in &records {
                for row in flatten::rows(r, args.metadata)? {
                    columns.observe(&row);
                }
            }
            let mut w = CsvWriter::new(out, columns, args.metadata)?;
            for r in &records {
                w.write(r)?;
            }
            (w.rows(), w.finish()?)
        }
    };
    Ok((
        Summary {
            subject: target.subject.clone(),
            messages,
            rows,
        },
        out,
    ))
}

/// The binary: connect, find the session, export it to the file or stdout.
pub async fn run(args: &Args) -> Result<Summary, ExportError> {
    let reader = SessionReader::connect(&args.nats_url, &args.subject_prefix)
        .await?
        .with_stall_timeout(args.stall_timeout);
    let target = reader
        .find(args.device_id.as_deref(), &args.session_id)
        .await?;
    match &args.output {
        None => {
            let stdout = std::io::stdout().lock();
            let (summary, _) =
                export_to(&reader, &target, args, std::io::BufWriter::new(stdout)).await?;
            Ok(summary)
        }
        Some(path) => {
            let file = std::fs::File::create(path)?;
            match export_to(&reader, &target, args, std::io::BufWriter::new(file)).await {
                Ok((summary, _)) => Ok(summary),
                Err(e) => {
                    // No half-written export left behind looking complete.
                    let _ = std::fs::remove_file(path);
                    Err(e)
                }
            }
        }
    }
}
