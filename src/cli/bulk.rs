//! `glados bulk FILE`: bulk registration (draft §8.3) of any number of
//! mappings, resumable.
//!
//! 1. **Validate.** Every line is read with the GP's own code
//!    ([`crate::core::bulk::LineSplitter`] and [`parse_line`]; a CSV record
//!    `sii,user` is checked as the NDJSON line it becomes), so a line the
//!    GP would refuse is refused here, with the GP's message, and never
//!    sent. That pass also plans the uploads.
//! 2. **Upload.** The valid lines, normalized, are cut into uploads of at
//!    most `--per-upload` lines (≤ 100,000) and 16 MiB, in file order, so
//!    the same input always gives the same uploads. Each carries an
//!    `Idempotency-Key` derived from the AP id, the upload's index and its
//!    bytes ([`idempotency_key`]): a re-sent upload is answered from the
//!    GP's memory (or re-applied harmlessly once that lapsed: the same
//!    mapping again is `unchanged`), never applied twice. Uploads run
//!    `--parallel` at a time; 409/429/503 wait for `Retry-After`, network
//!    failures and 5xx are retried with backoff.
//! 3. **Resume.** Each finished upload's summary is appended to a journal
//!    (`<state dir>/bulk-<ap>-<gp hash>.jsonl`, keyed by idempotency key),
//!    so re-running the same command after a crash or Ctrl-C skips what is
//!    done and sends the rest; the final summary adds both up. An upload
//!    that was cut off mid-way is simply sent again: the GP applies it
//!    once (lines the cut-off run had already written come back as
//!    `unchanged`).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::client::{Body, Client};
use super::error::Failure;
use crate::core::bulk::{
    parse_line, BulkSummary, LineError, LineProblem, LineSplitter, MAX_LINES_PER_UPLOAD,
    MAX_UPLOAD_BYTES,
};
use crate::core::encoding::hex_encode;
use crate::core::tags::MappingMeta;

/// Input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One `{"sii": "...", "user": "..."}` per line (what the GP takes).
    Ndjson,
    /// `sii,user` records (RFC 4180 quoting; an optional `sii,user` header).
    Csv,
}

/// `glados bulk` arguments.
#[derive(Debug, Args)]
pub struct BulkArgs {
    /// NDJSON or CSV file of mappings; `-` reads standard input.
    pub file: PathBuf,
    /// Input format [default: csv for *.csv, else ndjson].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Lines per upload (at most 100000, the GP's limit).
    #[arg(long, default_value_t = MAX_LINES_PER_UPLOAD, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LINES_PER_UPLOAD)))]
    pub per_upload: u32,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub parallel: u16,
    /// Write every refused line (line number, problem, detail, input) to
    /// this file as NDJSON.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Only validate: report bad lines and the uploads it would send.
    #[arg(long)]
    pub dry_run: bool,
    /// Ignore the journal of finished uploads (send everything again; the
    /// GP still applies nothing twice).
    #[arg(long)]
    pub fresh: bool,
    /// Where the journal of finished uploads is kept [default:
    /// $XDG_STATE_HOME/glados or ~/.local/state/glados].
    #[arg(long, env = "GLADOS_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Give up on an upload after this many seconds of retrying.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub max_retry: u64,
}

/// One line of the input, as validated.
enum Item<'a> {
    /// A valid line: its number and its normalized NDJSON form.
    Valid(u32, String),
    /// A refused line and what it was.
    Refused(LineError, &'a [u8]),
}

/// The normalized NDJSON line the GP is sent for a valid mapping; tags and
/// label only when the input line had them (`"tags":[]` clears them at
/// the GP, their absence leaves them as they are).
fn canonical(sii: &str, user: &str, meta: Option<&MappingMeta>) -> Result<String, Failure> {
    fn enc<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, Failure> {
        serde_json::to_string(v).map_err(|e| Failure::Usage(format!("cannot encode a line: {e}")))
    }
    let mut out = format!("{{\"sii\":{},\"user\":{}", enc(sii)?, enc(user)?);
    if let Some(m) = meta {
        out.push_str(&format!(",\"tags\":{}", enc(&m.tags)?));
        if let Some(label) = &m.label {
            out.push_str(&format!(",\"label\":{}", enc(label)?));
        }
    }
    out.push('}');
    Ok(out)
}

/// Checks one NDJSON line as the GP does.
fn check(n: u32, line: Result<&[u8], LineProblem>) -> Result<Option<Item<'_>>, Failure> {
    let raw = line.as_ref().map_or(&b""[..], |l| *l);
    Ok(match line.and_then(parse_line) {
        Ok(Some(l)) => Some(Item::Valid(
            n,
            canonical(l.sii.as_str(), l.user.as_str(), l.meta.as_ref())?,
        )),
        Ok(None) => None,
        Err(p) => Some(Item::Refused(p.at(n), raw)),
    })
}

/// Reads `path`, calling `f` for every non-blank line; returns the number of
/// lines read (blank ones included, as the GP counts them).
fn scan(
    path: &Path,
    format: Format,
    f: &mut dyn FnMut(Item<'_>) -> Result<(), Failure>,
) -> Result<u32, Failure> {
    let file = File::open(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    match format {
        Format::Ndjson => {
            let mut reader = BufReader::with_capacity(1 << 16, file);
            let mut splitter = LineSplitter::new();
            let mut failed: Option<Failure> = None;
            let mut sink = |n: u32, line: Result<&[u8], LineProblem>| {
                if failed.is_some() {
                    return;
                }
                if let Err(e) = check(n, line).and_then(|i| i.map_or(Ok(()), &mut *f)) {
                    failed = Some(e);
                }
            };
            loop {
                let buf = reader.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                let len = buf.len();
                splitter.push(buf, &mut sink);
                reader.consume(len);
            }
            splitter.finish(&mut sink);
            match failed {
                Some(e) => Err(e),
                None => Ok(splitter.lines()),
            }
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(BufReader::with_capacity(1 << 16, file));
            let mut record = csv::ByteRecord::new();
            let mut last = 0u32;
            let mut first = true;
            loop {
                let more = reader
                    .read_byte_record(&mut record)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
                if !more {
                    break;
                }
                let n = record
                    .position()
                    .map_or(last + 1, |p| u32::try_from(p.line()).unwrap_or(u32::MAX));
                last = n;
                let header = first
                    && record.len() == 2
                    && record
                        .iter()
                        .map(|f| f.to_ascii_lowercase())
                        .eq([&b"sii"[..], b"user"].iter().map(|f| f.to_vec()));
                first = false;
                if header {
                    continue;
                }
                let raw = record.as_slice().to_vec();
                let fields: Vec<&[u8]> = record.iter().collect();
                let item = match fields.as_slice() {
                    [sii, user] => match (std::str::from_utf8(sii), std::str::from_utf8(user)) {
                        (Ok(sii), Ok(user)) => {
                            check(n, Ok(canonical(sii, user, None)?.as_bytes()))?.map(|i| match i {
                                Item::Valid(n, c) => Item::Valid(n, c),
                                Item::Refused(e, _) => Item::Refused(e, &raw),
                            })
                        }
                        _ => Some(Item::Refused(LineProblem::NotUtf8.at(n), &raw)),
                    },
                    _ => Some(Item::Refused(
                        LineError {
                            line: n,
                            problem: "invalid-csv".into(),
                            detail: format!("expected 2 fields sii,user; got {}", fields.len()),
                        },
                        &raw,
                    )),
                };
                if let Some(item) = item {
                    f(item)?;
                }
            }
            Ok(last)
        }
    }
}

/// The idempotency key of upload `index` of `ap`: `gb1-` + hex SHA-256 over
/// the AP id, the index and the upload's bytes. Deterministic, so a re-run
/// sends the same upload under the same key; the index keeps two equal
/// uploads of one file apart.
pub fn idempotency_key(ap: &str, index: u64, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"glados-bulk-v1\0");
    h.update(ap.as_bytes());
    h.update(b"\0");
    h.update(index.to_be_bytes());
    h.update(bytes);
    format!("gb1-{}", hex_encode(&h.finalize()))
}

/// One upload.
struct Chunk {
    index: u64,
    key: String,
    bytes: Vec<u8>,
    /// The input line number of each of its lines.
    src: Vec<u32>,
}

impl Chunk {
    fn new(index: u64) -> Chunk {
        Chunk {
            index,
            key: String::new(),
            bytes: Vec::new(),
            src: Vec::new(),
        }
    }

    /// The `n`-th (1-based) line as sent.
    fn line(&self, n: u32) -> Option<&[u8]> {
        self.bytes
            .split(|&b| b == b'\n')
            .nth(usize::try_from(n).ok()?.checked_sub(1)?)
    }
}

/// Cuts valid lines into uploads (same input, same uploads).
struct Cutter {
    ap: String,
    per_upload: usize,
    cur: Chunk,
}

impl Cutter {
    /// Adds a line; returns the upload it completed, if any.
    fn push(&mut self, n: u32, line: &str) -> Option<Chunk> {
        let full = !self.cur.src.is_empty()
            && (self.cur.src.len() >= self.per_upload
                || self.cur.bytes.len() + line.len() + 1 > MAX_UPLOAD_BYTES);
        let done = if full { self.finish() } else { None };
        self.cur.bytes.extend_from_slice(line.as_bytes());
        self.cur.bytes.push(b'\n');
        self.cur.src.push(n);
        done
    }

    /// The last, partial upload.
    fn finish(&mut self) -> Option<Chunk> {
        if self.cur.src.is_empty() {
            return None;
        }
        let next = Chunk::new(self.cur.index + 1);
        let mut c = std::mem::replace(&mut self.cur, next);
        c.key = idempotency_key(&self.ap, c.index, &c.bytes);
        Some(c)
    }
}

/// A journal line: one finished upload.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: String,
    /// The GP's summary, line numbers already those of the input.
    summary: BulkSummary,
}

/// The append-only journal of finished uploads.
struct Journal {
    path: PathBuf,
    done: HashMap<String, BulkSummary>,
    file: File,
}

impl Journal {
    fn open(dir: &Path, ap: &str, gp: &str, fresh: bool) -> Result<Journal, Failure> {
        fs::create_dir_all(dir).map_err(|e| {
            Failure::Usage(format!(
                "cannot create the state directory {}: {e}",
                dir.display()
            ))
        })?;
        let safe: String = ap
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let gp_hash = hex_encode(&Sha256::digest(gp.as_bytes()));
        let path = dir.join(format!("bulk-{safe}-{}.jsonl", &gp_hash[..12]));
        let mut done = HashMap::new();
        if !fresh {
            if let Ok(f) = File::open(&path) {
                // A line torn by a crash does not parse and is skipped: its
                // upload is sent again and answered from the GP's memory.
                for line in BufReader::new(f).lines().map_while(Result::ok) {
                    if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                        done.insert(e.key, e.summary);
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
        Ok(Journal { path, done, file })
    }

    fn record(&mut self, key: &str, summary: &BulkSummary) -> Result<(), Failure> {
        let mut line = serde_json::to_vec(&json!({ "key": key, "summary": summary }))
            .map_err(|e| Failure::Usage(format!("cannot encode the journal: {e}")))?;
        line.push(b'\n');
        // One write of the whole line: a crash leaves it whole or torn, and
        // a torn line is ignored on the next run.
        self.file
            .write_all(&line)
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", self.path.display())))
    }
}

/// Where refused lines are written (`--report`).
struct Report(Option<File>);

impl Report {
    fn write(&mut self, e: &LineError, input: Option<&[u8]>, by: &str) -> Result<(), Failure> {
        let Some(f) = &mut self.0 else {
            return Ok(());
        };
        let mut doc =
            json!({ "line": e.line, "problem": e.problem, "detail": e.detail, "refused_by": by });
        if let (Some(input), Some(o)) = (input, doc.as_object_mut()) {
            let shown = &input[..input.len().min(4096)];
            o.insert("input".into(), json!(String::from_utf8_lossy(shown)));
        }
        writeln!(f, "{doc}").map_err(|e| Failure::Usage(format!("cannot write the report: {e}")))
    }
}

/// Totals over the whole input.
#[derive(Debug, Default, Serialize)]
struct Totals {
    /// Lines read (blank ones included).
    lines: u32,
    /// Valid lines sent (or to send).
    valid: u64,
    uploads: u64,
    /// Uploads skipped because the journal has them.
    resumed: u64,
    /// Uploads the GP answered from memory (sent before).
    replayed: u64,
    created: u64,
    updated: u64,
    unchanged: u64,
    /// Of the lines applied, those whose SII another AP already held,
    /// preferred, on this GP or a peer (draft §8.2.1): stored without
    /// preference until the user chooses.
    existing_elsewhere: u64,
    refused: u64,
    refused_locally: u64,
    /// Refused lines by problem slug.
    refused_by_reason: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<PathBuf>,
    /// Uploads accounted for so far.
    #[serde(skip)]
    done_uploads: u64,
}

impl Totals {
    fn refuse(&mut self, slug: &str) {
        self.refused += 1;
        *self.refused_by_reason.entry(slug.to_owned()).or_default() += 1;
    }

    fn add(&mut self, s: &BulkSummary) {
        self.created += u64::from(s.created);
        self.updated += u64::from(s.updated);
        self.unchanged += u64::from(s.unchanged);
        self.existing_elsewhere += u64::from(s.existing);
        for e in &s.errors {
            self.refuse(&e.problem);
        }
        // Only the first 100 refusals of an upload are listed.
        let unlisted = u64::from(s.failed).saturating_sub(s.errors.len() as u64);
        if unlisted > 0 {
            self.refused += unlisted;
            *self.refused_by_reason.entry("unlisted".into()).or_default() += unlisted;
        }
    }

    fn print(&self, dry_run: bool) {
        let sent = if dry_run { "to send" } else { "sent" };
        eprintln!(
            "glados bulk: {} lines read; {} valid {sent} in {} uploads ({} resumed from the journal, {} answered from the GP's memory)",
            self.lines, self.valid, self.uploads, self.resumed, self.replayed
        );
        if !dry_run {
            eprintln!("  created    {:>12}", self.created);
            eprintln!("  updated    {:>12}", self.updated);
            eprintln!("  unchanged  {:>12}", self.unchanged);
            if self.existing_elsewhere > 0 {
                eprintln!(
                    "  existing elsewhere {:>4}   (another AP holds the SII, preferred: stored without preference until the user chooses)",
                    self.existing_elsewhere
                );
            } else {
                eprintln!("  existing elsewhere {:>4}", 0);
            }
        }
        let reasons: Vec<String> = self
            .refused_by_reason
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if self.refused == 0 {
            eprintln!("  refused    {:>12}", 0);
        } else {
            eprintln!(
                "  refused    {:>12}   ({}; {} locally, not sent)",
                self.refused,
                reasons.join(", "),
                self.refused_locally
            );
        }
        if let Some(r) = &self.report {
            eprintln!("  refused lines: {}", r.display());
        }
    }
}

/// A finished upload, back from a worker.
struct Done {
    chunk: Chunk,
    summary: BulkSummary,
    journal: bool,
    replayed: bool,
}

/// Sends one upload until the GP answers it (retrying what may be retried).
fn upload(
    client: &Client,
    chunk: &Chunk,
    max_retry: Duration,
) -> Result<(BulkSummary, bool), Failure> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        let body = Body::Ndjson {
            bytes: &chunk.bytes,
            key: &chunk.key,
        };
        let (wait, why) = match client.authed("POST", "/v1/mappings/bulk", body) {
            Ok(a) if a.ok() => {
                let summary: BulkSummary = serde_json::from_slice(&a.body).map_err(|e| {
                    Failure::Network(format!("the GP's bulk summary does not parse: {e}"))
                })?;
                return Ok((summary, a.replayed));
            }
            // In use (another run of this upload still holds the key), rate
            // limited, unavailable: the GP says when to come back.
            Ok(a) if matches!(a.status, 409 | 429 | 503) => (
                a.retry_after
                    .map_or(backoff, Duration::from_secs)
                    .max(Duration::from_millis(200)),
                a.failure(),
            ),
            Ok(a) if a.status >= 500 => (backoff, a.failure()),
            Ok(a) => return Err(a.failure()),
            Err(e @ Failure::Network(_)) => (backoff, e),
            Err(e) => return Err(e),
        };
        if started.elapsed() + wait > max_retry {
            return Err(why);
        }
        if !std::io::stderr().is_terminal() {
            eprintln!(
                "glados: upload {} (lines {}-{}): {why}; retrying in {:.1} s",
                chunk.index + 1,
                chunk.src.first().copied().unwrap_or(0),
                chunk.src.last().copied().unwrap_or(0),
                wait.as_secs_f64()
            );
        }
        sleep(wait);
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Default state directory.
fn default_state_dir() -> Result<PathBuf, Failure> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    var("XDG_STATE_HOME")
        .map(|p| PathBuf::from(p).join("glados"))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".local/state/glados")))
        .ok_or_else(|| Failure::Usage("no state directory: pass --state-dir".into()))
}

/// Copies standard input to a file, so it can be read twice.
fn spool_stdin(dir: &Path) -> Result<PathBuf, Failure> {
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("stdin-{}.tmp", std::process::id()));
    let mut out = File::create(&path)?;
    std::io::copy(&mut std::io::stdin().lock(), &mut out)?;
    Ok(path)
}

/// Runs `glados bulk`; the exit code is 1 when lines were refused.
pub fn run(
    client: Option<&Client>,
    ap: &str,
    gp: &str,
    args: &BulkArgs,
    json_out: bool,
) -> Result<u8, Failure> {
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir()?,
    };
    let stdin = args.file.as_os_str() == "-";
    let path = if stdin {
        spool_stdin(&state_dir)?
    } else {
        args.file.clone()
    };
    let result = run_file(client, ap, gp, args, &path, &state_dir, json_out);
    if stdin {
        let _ = fs::remove_file(&path);
    }
    result
}

fn run_file(
    client: Option<&Client>,
    ap: &str,
    gp: &str,
    args: &BulkArgs,
    path: &Path,
    state_dir: &Path,
    json_out: bool,
) -> Result<u8, Failure> {
    let format =
        args.format
            .unwrap_or_else(|| match args.file.extension().and_then(|e| e.to_str()) {
                Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
                _ => Format::Ndjson,
            });
    let mut report = Report(match &args.report {
        Some(p) => Some(File::create(p).map_err(|e| {
            Failure::Usage(format!("cannot write the report {}: {e}", p.display()))
        })?),
        None => None,
    });
    let input = Input {
        path,
        format,
        ap,
        per_upload: args.per_upload as usize,
    };
    let (mut totals, plan) = validate(&input, &mut report)?;
    totals.report = args.report.clone();
    match (client, args.dry_run) {
        (Some(client), false) => {
            let journal = Journal::open(state_dir, ap, gp, args.fresh)?;
            send(
                client,
                &input,
                args,
                &plan,
                journal,
                &mut totals,
                &mut report,
            )?;
            finish(&totals, false, json_out)
        }
        _ => finish(&totals, true, json_out),
    }
}

/// The input and how it is cut.
struct Input<'a> {
    path: &'a Path,
    format: Format,
    ap: &'a str,
    per_upload: usize,
}

impl Input<'_> {
    fn cutter(&self) -> Cutter {
        Cutter {
            ap: self.ap.to_owned(),
            per_upload: self.per_upload,
            cur: Chunk::new(0),
        }
    }
}

/// Pass 1: checks every line (refused ones go to the report) and plans
/// the uploads: their keys and line counts.
fn validate(
    input: &Input<'_>,
    report: &mut Report,
) -> Result<(Totals, Vec<(String, u64)>), Failure> {
    let mut totals = Totals::default();
    let mut plan = Vec::new();
    let mut cutter = input.cutter();
    let mut looks_csv = false;
    totals.lines = scan(input.path, input.format, &mut |item| {
        match item {
            Item::Valid(n, line) => {
                totals.valid += 1;
                if let Some(c) = cutter.push(n, &line) {
                    plan.push((c.key, c.src.len() as u64));
                }
            }
            Item::Refused(e, raw) => {
                looks_csv |= e.line == 1
                    && e.problem == "invalid-json"
                    && !raw.starts_with(b"{")
                    && raw.contains(&b',');
                totals.refuse(&e.problem);
                totals.refused_locally += 1;
                report.write(&e, Some(raw), "glados")?;
            }
        }
        Ok(())
    })?;
    if let Some(c) = cutter.finish() {
        plan.push((c.key, c.src.len() as u64));
    }
    totals.uploads = plan.len() as u64;
    if looks_csv && input.format == Format::Ndjson {
        eprintln!("glados: line 1 looks like CSV; pass --format csv if it is");
    }
    Ok((totals, plan))
}

/// Pass 2: cuts the same uploads again and sends those the journal does
/// not have, `--parallel` at a time; every answer is journaled, counted
/// and reported as it comes.
fn send(
    client: &Client,
    input: &Input<'_>,
    args: &BulkArgs,
    plan: &[(String, u64)],
    mut journal: Journal,
    totals: &mut Totals,
    report: &mut Report,
) -> Result<(), Failure> {
    let already: u64 = plan
        .iter()
        .filter(|(k, _)| journal.done.contains_key(k))
        .map(|(_, n)| n)
        .sum();
    let bar = ProgressBar::new(totals.valid);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:32} {human_pos}/{human_len} lines · {rate} · ETA {eta} · {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} lines/s", s.per_sec());
        }),
    );
    bar.set_position(already);
    bar.reset_eta();
    let plain = !std::io::stderr().is_terminal();

    // Pass 2: cut the same uploads again and send those not done yet.
    let stop = AtomicBool::new(false);
    let max_retry = Duration::from_secs(args.max_retry);
    let parallel = usize::from(args.parallel);
    let (work_tx, work_rx) = sync_channel::<Chunk>(parallel);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = sync_channel::<Result<Done, Failure>>(parallel * 2);
    let journal_summaries = journal.done.clone();
    let outcome: Result<(), Failure> = std::thread::scope(|s| {
        // Producer: re-reads the input; finished uploads go straight to the
        // results, the others to the workers.
        let producer = {
            let done_tx = done_tx.clone();
            let stop = &stop;
            let journal_summaries = &journal_summaries;
            s.spawn(move || -> Result<(), Failure> {
                let mut cutter = input.cutter();
                let mut dispatch = |c: Chunk| -> Result<(), Failure> {
                    if stop.load(Ordering::Relaxed) {
                        return Err(Failure::Usage("stopped".into()));
                    }
                    let planned = usize::try_from(c.index).ok().and_then(|i| plan.get(i));
                    if planned.map(|(k, _)| k) != Some(&c.key) {
                        return Err(Failure::Usage(format!(
                            "{} changed while it was being sent; run the command again",
                            args.file.display()
                        )));
                    }
                    if let Some(summary) = journal_summaries.get(&c.key).cloned() {
                        let _ = done_tx.send(Ok(Done {
                            chunk: c,
                            summary,
                            journal: true,
                            replayed: false,
                        }));
                        Ok(())
                    } else {
                        work_tx
                            .send(c)
                            .map_err(|_| Failure::Usage("stopped".into()))
                    }
                };
                scan(input.path, input.format, &mut |item| match item {
                    Item::Valid(n, line) => cutter.push(n, &line).map_or(Ok(()), &mut dispatch),
                    Item::Refused(..) => Ok(()),
                })?;
                if let Some(c) = cutter.finish() {
                    dispatch(c)?;
                }
                Ok(())
            })
        };
        for _ in 0..parallel {
            let done_tx = done_tx.clone();
            let work_rx = &work_rx;
            let stop = &stop;
            s.spawn(move || loop {
                let next = work_rx.lock().ok().and_then(|rx| rx.recv().ok());
                let Some(chunk) = next else { return };
                if stop.load(Ordering::Relaxed) {
                    // Drain: the producer stops at its next upload.
                    continue;
                }
                let r = upload(client, &chunk, max_retry).map(|(mut summary, replayed)| {
                    for e in &mut summary.errors {
                        let i = (e.line as usize).checked_sub(1);
                        e.line = i.and_then(|i| chunk.src.get(i)).copied().unwrap_or(0);
                    }
                    Done {
                        chunk,
                        summary,
                        journal: false,
                        replayed,
                    }
                });
                if done_tx.send(r).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        // Collector (this thread): journal, totals, report, progress.
        let mut failure = None;
        for r in done_rx.iter() {
            match r {
                Ok(d) => {
                    if let Err(e) = collect(&d, &mut journal, totals, report) {
                        failure.get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                    if !d.journal {
                        bar.inc(d.chunk.src.len() as u64);
                    }
                    let msg = format!("{}/{} uploads", totals.done_uploads, totals.uploads);
                    bar.set_message(msg.clone());
                    if plain && !d.journal {
                        eprintln!(
                            "glados: upload {} (lines {}-{}) done: {} created, {} updated, {} unchanged, {} refused ({msg})",
                            d.chunk.index + 1,
                            d.chunk.src.first().copied().unwrap_or(0),
                            d.chunk.src.last().copied().unwrap_or(0),
                            d.summary.created,
                            d.summary.updated,
                            d.summary.unchanged,
                            d.summary.failed
                        );
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(Failure::Usage("the reader thread failed".into())));
        match failure {
            Some(e) => Err(e),
            None => produced,
        }
    });
    bar.finish_and_clear();
    if outcome.is_err() {
        totals.print(false);
        eprintln!("glados: stopped; the uploads that finished are kept: run the same command again to send the rest");
    }
    outcome
}

fn collect(
    d: &Done,
    journal: &mut Journal,
    totals: &mut Totals,
    report: &mut Report,
) -> Result<(), Failure> {
    if !d.journal {
        journal.record(&d.chunk.key, &d.summary)?;
    }
    totals.add(&d.summary);
    totals.done_uploads += 1;
    totals.resumed += u64::from(d.journal);
    totals.replayed += u64::from(d.replayed);
    for e in &d.summary.errors {
        let n = d
            .chunk
            .src
            .iter()
            .position(|&l| l == e.line)
            .and_then(|i| u32::try_from(i + 1).ok());
        report.write(e, n.and_then(|n| d.chunk.line(n)), "gp")?;
    }
    Ok(())
}

fn finish(totals: &Totals, dry_run: bool, json_out: bool) -> Result<u8, Failure> {
    if json_out {
        println!("{}", serde_json::to_string(totals).unwrap_or_default());
    }
    totals.print(dry_run);
    Ok(u8::from(totals.refused > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("glados-cli-bulk-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let p = dir.join(name);
        let _ = fs::write(&p, content);
        p
    }

    /// Line numbers with the normalized line, or the problem slug.
    type Numbered = Vec<(u32, String)>;

    fn items(path: &Path, format: Format) -> (u32, Numbered, Numbered) {
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        let lines = scan(path, format, &mut |i| {
            match i {
                Item::Valid(n, l) => ok.push((n, l)),
                Item::Refused(e, _) => bad.push((e.line, e.problem)),
            }
            Ok(())
        });
        (lines.unwrap_or(0), ok, bad)
    }

    #[test]
    fn ndjson_and_csv_are_checked_by_the_gps_rules_and_normalized() {
        let nd = temp(
            "a.ndjson",
            "{\"sii\":\"+1 415 555 0100\",\"user\":\"u1\"}\n\n{\"sii\":\"+999\",\"user\":\"x\"}\r\n{\"user\":\"u2\",\"sii\":\"Bob@Example.COM\"}",
        );
        let (lines, ok, bad) = items(&nd, Format::Ndjson);
        assert_eq!(lines, 4);
        assert_eq!(
            ok,
            vec![
                (1, r#"{"sii":"+14155550100","user":"u1"}"#.to_owned()),
                (4, r#"{"sii":"bob@example.com","user":"u2"}"#.to_owned()),
            ]
        );
        assert_eq!(bad, vec![(3, "invalid-sii".to_owned())]);

        let csv = temp(
            "a.csv",
            "SII,User\n+14155550100,\"a,b\"\n+14155550101\n+1415,u\n+14155550102,\"q\"\"x\"\n",
        );
        let (lines, ok, bad) = items(&csv, Format::Csv);
        assert_eq!(lines, 5);
        assert_eq!(
            ok,
            vec![
                (2, r#"{"sii":"+14155550100","user":"a,b"}"#.to_owned()),
                (5, r#"{"sii":"+14155550102","user":"q\"x"}"#.to_owned()),
            ]
        );
        assert_eq!(
            bad,
            vec![(3, "invalid-csv".to_owned()), (4, "invalid-sii".to_owned())]
        );
    }

    #[test]
    fn the_same_lines_give_the_same_uploads_and_keys() {
        let cut = |per: usize| {
            let mut c = Cutter {
                ap: "ap".into(),
                per_upload: per,
                cur: Chunk::new(0),
            };
            let mut out: Vec<Chunk> = (1..=5)
                .filter_map(|n| c.push(n, &format!("line{n}")))
                .collect();
            out.extend(c.finish());
            out
        };
        let a = cut(2);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].src, vec![1, 2]);
        assert_eq!(a[2].src, vec![5]);
        assert_eq!(a[1].bytes, b"line3\nline4\n");
        assert_eq!(a[1].line(2), Some(&b"line4"[..]));
        assert_eq!(a[1].line(0), None);
        let b = cut(2);
        let keys = |v: &[Chunk]| v.iter().map(|c| c.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&a), keys(&b));
        assert!(a[0].key.starts_with("gb1-") && a[0].key.len() == 68);
        // Another AP, another index or other bytes: another key.
        assert_ne!(
            idempotency_key("ap", 0, b"x"),
            idempotency_key("other", 0, b"x")
        );
        assert_ne!(
            idempotency_key("ap", 0, b"x"),
            idempotency_key("ap", 1, b"x")
        );
        assert_ne!(
            idempotency_key("ap", 0, b"x"),
            idempotency_key("ap", 0, b"y")
        );
        assert!(crate::core::bulk::IdempotencyKey::parse(&a[0].key).is_ok());
    }

    #[test]
    fn the_line_sent_keeps_tags_and_label_and_reads_back_the_same() {
        for line in [
            r#"{"user":"u1","sii":"+1 415 555 0100","label":"Büro \"2\"","tags":["work","personal"]}"#,
            r#"{"sii":"+14155550100","user":"u1","tags":[]}"#,
            r#"{"sii":"+14155550100","user":"u1"}"#,
        ] {
            let parsed = parse_line(line.as_bytes())
                .ok()
                .flatten()
                .unwrap_or_else(|| unreachable!());
            let sent = canonical(
                parsed.sii.as_str(),
                parsed.user.as_str(),
                parsed.meta.as_ref(),
            )
            .ok()
            .unwrap_or_else(|| unreachable!());
            let back = parse_line(sent.as_bytes()).ok().flatten();
            assert_eq!(back.as_ref(), Some(&parsed), "{sent}");
        }
        // Without tags or label the line is what it always was (journals and
        // idempotency keys of earlier runs stay valid).
        assert_eq!(
            canonical("+14155550100", "u1", None).ok().as_deref(),
            Some(r#"{"sii":"+14155550100","user":"u1"}"#)
        );
    }

    #[test]
    fn the_journal_survives_a_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("glados-cli-journal-{}", std::process::id()));
        let summary = BulkSummary {
            lines: 2,
            created: 2,
            ..BulkSummary::default()
        };
        let mut j = Journal::open(&dir, "ap", "http://gp", false)
            .ok()
            .unwrap_or_else(|| unreachable!());
        assert!(j.record("k1", &summary).is_ok());
        let _ = (&j.file).write_all(b"{\"key\":\"k2\",\"summ");
        let again = Journal::open(&dir, "ap", "http://gp", false)
            .ok()
            .unwrap_or_else(|| unreachable!());
        assert_eq!(again.done.len(), 1);
        assert_eq!(again.done.get("k1"), Some(&summary));
        let fresh = Journal::open(&dir, "ap", "http://gp", true)
            .ok()
            .unwrap_or_else(|| unreachable!());
        assert!(fresh.done.is_empty());
        // Another GP: another journal.
        let other = Journal::open(&dir, "ap", "http://gp2", false)
            .ok()
            .unwrap_or_else(|| unreachable!());
        assert!(other.done.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
