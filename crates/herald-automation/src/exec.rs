//! Runs one job's process (spec `automation.md` §4, §5, §12).
//!
//! A job runs in its own temp directory (script, `input.json`), with a
//! scrubbed environment, in its own process group, wrapped by the chosen
//! [`SandboxLevel`]. stdout lines become `Output` records, stderr lines
//! `Error` records, and JSON lines written to fd 3 become records of any
//! stream. Secrets are masked and every stream is capped before a record is
//! sent.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use command_fds::{CommandFdExt as _, FdMapping};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sandbox::{self, RunbookKind, SandboxLevel};

/// Longest line kept as one record; longer lines are split.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Replacement for a masked secret.
pub const MASK: &str = "*****";
/// The fd a job writes JSON-lines records to.
pub const RECORDS_FD: i32 = 3;
/// uid/gid the `rlimits` level runs jobs as (when the server is root).
pub const NOBODY: u32 = 65534;

/// How long streams are still drained after the job's process has exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// Masks longer than this are not considered when choosing where to split a
/// long line (multi-line secrets are masked line by line anyway).
const MAX_SPLIT_GUARD: usize = 4096;
const READ_CHUNK: usize = 32 * 1024;
const FSIZE_LIMIT: u64 = 1 << 30;
const NOFILE_LIMIT: u32 = 1024;
const NPROC_LIMIT: u32 = 1024;

/// The job stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StreamType {
    /// The job's output: stdout lines, the result a caller reads.
    Output,
    /// Errors: stderr lines.
    Error,
    /// Warnings the runbook writes as records on fd 3.
    Warning,
    /// Verbose messages the runbook writes as records on fd 3.
    Verbose,
    /// Progress messages the runbook writes as records on fd 3.
    Progress,
    /// Debug messages the runbook writes as records on fd 3.
    Debug,
}

impl StreamType {
    /// Every stream, in Azure's order.
    pub const ALL: [StreamType; 6] = [
        StreamType::Output,
        StreamType::Error,
        StreamType::Warning,
        StreamType::Verbose,
        StreamType::Progress,
        StreamType::Debug,
    ];

    /// The stream's name as Azure spells it (`Output`, `Error`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            StreamType::Output => "Output",
            StreamType::Error => "Error",
            StreamType::Warning => "Warning",
            StreamType::Verbose => "Verbose",
            StreamType::Progress => "Progress",
            StreamType::Debug => "Debug",
        }
    }

    /// Case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    fn index(self) -> usize {
        match self {
            StreamType::Output => 0,
            StreamType::Error => 1,
            StreamType::Warning => 2,
            StreamType::Verbose => 3,
            StreamType::Progress => 4,
            StreamType::Debug => 5,
        }
    }
}

impl std::fmt::Display for StreamType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stream record of a job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The stream the record belongs to.
    pub stream: StreamType,
    /// The record's text (secrets masked).
    pub text: String,
    /// A structured value written with the record, if any.
    pub value: Option<Value>,
    /// Unix time in milliseconds.
    pub time_ms: i64,
}

/// Everything needed to run one job. Its `Debug` output leaves out the
/// script, the input, env values and masks (they may hold secrets).
#[derive(Clone)]
pub struct JobSpec {
    /// The job this spec runs.
    pub job_id: String,
    /// The runbook's language, which picks the interpreter.
    pub kind: RunbookKind,
    /// Absolute interpreter path, from [`sandbox::find_interpreter`].
    pub interpreter: PathBuf,
    /// Runbook content.
    pub script: String,
    /// Written to the file named by `$HERALD_JOB_INPUT`.
    pub input_json: String,
    /// Extra environment variables (`HERALD_ADDR`, `HERALD_TOKEN`, …).
    pub env: Vec<(String, String)>,
    /// Prepended to the job's `PATH`.
    pub path_dirs: Vec<PathBuf>,
    /// Wall-clock limit; `Duration::ZERO` means none.
    pub timeout: Duration,
    /// SIGTERM → SIGKILL grace.
    pub grace: Duration,
    /// Secret values replaced by `*****` in every record.
    pub masks: Vec<String>,
    /// `bwrap`/`unshare`: keep the host network (otherwise only `lo`).
    pub allow_network: bool,
    /// RLIMIT_AS in MiB (0 = none); not applied to node and pwsh, whose
    /// runtimes reserve huge address spaces.
    pub memory_limit_mb: u64,
    /// Bytes kept per stream per job.
    pub stream_limit: usize,
    /// Parent of the per-job temp dir (`None` = system temp). With the
    /// `rlimits` level as root it must be traversable by uid 65534. It must
    /// not lie inside one of `hidden`.
    pub work_root: Option<PathBuf>,
    /// Paths the job must not see (the data dir, key files): covered by an
    /// empty tmpfs (dirs) or `/dev/null` (files) in the job's mount
    /// namespace at the `bwrap` and `unshare` levels. `rlimits` relies on
    /// their modes (0700/0600, owned by the server) instead.
    pub hidden: Vec<PathBuf>,
    /// Where a note of the running attempt (pid, process group, work dir) is
    /// kept while the job runs, so that the next start of the runner can
    /// kill what a crash left behind and remove its work dir; see
    /// [`reap_interrupted`]. Must not be readable or writable by jobs.
    pub attempts_dir: Option<PathBuf>,
    /// The worker running this attempt, kept in the attempt's note.
    pub worker_id: String,
}

impl JobSpec {
    /// A spec with the usual defaults (1 h timeout, 5 s grace, 512 MiB,
    /// 1 MiB per stream, no network restrictions lifted).
    pub fn new(
        job_id: impl Into<String>,
        kind: RunbookKind,
        interpreter: PathBuf,
        script: impl Into<String>,
    ) -> Self {
        JobSpec {
            job_id: job_id.into(),
            kind,
            interpreter,
            script: script.into(),
            input_json: "{}".into(),
            env: Vec::new(),
            path_dirs: Vec::new(),
            timeout: Duration::from_secs(3600),
            grace: Duration::from_secs(5),
            masks: Vec::new(),
            allow_network: false,
            memory_limit_mb: 512,
            stream_limit: 1024 * 1024,
            work_root: None,
            hidden: Vec::new(),
            attempts_dir: None,
            worker_id: String::new(),
        }
    }
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("job_id", &self.job_id)
            .field("kind", &self.kind)
            .field("interpreter", &self.interpreter)
            .field("script_bytes", &self.script.len())
            .field("input_json_bytes", &self.input_json.len())
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("path_dirs", &self.path_dirs)
            .field("timeout", &self.timeout)
            .field("grace", &self.grace)
            .field("masks", &self.masks.len())
            .field("allow_network", &self.allow_network)
            .field("memory_limit_mb", &self.memory_limit_mb)
            .field("stream_limit", &self.stream_limit)
            .field("work_root", &self.work_root)
            .field("hidden", &self.hidden)
            .field("attempts_dir", &self.attempts_dir)
            .finish()
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited 0.
    Completed,
    /// The process failed: non-zero exit, killed by a signal, or could not start.
    Failed {
        /// What went wrong, for the job's status details.
        reason: String,
    },
    /// The job ran past its runbook's timeout and was killed.
    TimedOut,
    /// The job was stopped on request.
    Stopped,
}

/// What running a job came to.
#[derive(Debug, Clone)]
pub struct ExecResult {
    /// How the job ended.
    pub outcome: Outcome,
    /// The process's exit code (`None` when killed by a signal or never started).
    pub exit_code: Option<i32>,
    /// The sandbox the job actually ran in.
    pub level: SandboxLevel,
    /// pid of the spawned process (the sandbox wrapper for levels above `none`).
    pub pid: Option<u32>,
}

/// Runs the job to its end.
///
/// Records are sent on `records` in order as they appear (one per line of
/// stdout = `Output`, stderr = `Error`, fd 3 = JSON). `started` is called once
/// with the pid right after the process spawned. Cancelling `stop` sends
/// SIGTERM to the process group and SIGKILL after `grace` (→ `Stopped`); the
/// timeout does the same (→ `TimedOut`). All records are sent before this
/// returns (streams held open by escaped grandchildren are drained for at
/// most about a second after the process exited). A dropped receiver is
/// fine: records are then discarded.
pub async fn run(
    spec: JobSpec,
    level: SandboxLevel,
    records: mpsc::Sender<Record>,
    stop: CancellationToken,
    started: impl FnOnce(u32) + Send,
) -> ExecResult {
    let failed = |reason: String| ExecResult {
        outcome: Outcome::Failed { reason },
        exit_code: None,
        level,
        pid: None,
    };
    if stop.is_cancelled() {
        return ExecResult {
            outcome: Outcome::Stopped,
            exit_code: None,
            level,
            pid: None,
        };
    }

    if level == SandboxLevel::None {
        tracing::warn!(job_id = %spec.job_id, "job runs with sandbox \"none\": it can read the data dir, the master key and the server's files");
    }
    let workdir = match prepare_workdir(&spec, level) {
        Ok(w) => w,
        Err(reason) => return failed(reason),
    };
    let mut cmd = match build_command(&spec, level, &workdir).await {
        Ok(c) => c,
        Err(reason) => return failed(reason),
    };

    // fd 3: the write end goes to the child (only), we read the other end.
    let (fd3_read, fd3_write) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return failed(format!("could not create the records pipe: {e}")),
    };
    if let Err(e) = cmd.fd_mappings(vec![FdMapping {
        parent_fd: fd3_write.into(),
        child_fd: RECORDS_FD,
    }]) {
        return failed(format!("could not map the records pipe: {e}"));
    }

    let spawned = cmd.spawn();
    // The command owns our copy of fd 3's write end: drop it now so the read
    // end sees EOF once the job (and whatever it spawned) is gone.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let what = match level {
                SandboxLevel::None => spec.interpreter.display().to_string(),
                other => format!("the {other} sandbox"),
            };
            return failed(format!("could not start {what}: {e}"));
        }
    };
    let pid = child.id();
    let note = pid.and_then(|p| note_attempt(&spec, p, &workdir.path));
    if let Some(pid) = pid {
        started(pid);
    }
    let pgid = pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
    tracing::debug!(job_id = %spec.job_id, level = %level, pid, "job process started");

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let fd3 = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd3_read.into()) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(job_id = %spec.job_id, error = %e, "cannot read the job's fd 3");
            None
        }
    };

    let sink = Sink::new(records, &spec.masks, spec.stream_limit);
    let exited = CancellationToken::new();
    let supervise = async {
        let r = supervise(&mut child, pgid, spec.timeout, spec.grace, &stop).await;
        exited.cancel();
        r
    };
    let (sup, (), (), ()) = tokio::join!(
        supervise,
        pump(stdout, Source::Stdout, &sink, &exited),
        pump(stderr, Source::Stderr, &sink, &exited),
        pump(fd3, Source::Fd3, &sink, &exited),
    );
    drop(child);
    remove_workdir(workdir, &spec.job_id);
    if let Some(note) = note {
        let _ = std::fs::remove_file(note);
    }

    let (end, status) = sup;
    let exit_code = status.as_ref().ok().and_then(|s| s.code());
    let outcome = match end {
        End::TimedOut => Outcome::TimedOut,
        End::Stopped => Outcome::Stopped,
        End::Exited => match status {
            Ok(s) if s.success() => Outcome::Completed,
            Ok(s) => Outcome::Failed {
                reason: describe_status(s),
            },
            Err(e) => Outcome::Failed {
                reason: format!("waiting for the job's process failed: {e}"),
            },
        },
    };
    tracing::debug!(job_id = %spec.job_id, ?outcome, exit_code, "job process ended");
    ExecResult {
        outcome,
        exit_code,
        level,
        pid,
    }
}

fn describe_status(s: ExitStatus) -> String {
    if let Some(code) = s.code() {
        format!("exit code {code}")
    } else if let Some(sig) = s.signal() {
        match Signal::try_from(sig) {
            Ok(sig) => format!("killed by signal {}", sig.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        format!("ended abnormally ({s})")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Exited,
    TimedOut,
    Stopped,
}

/// Waits for the process, enforcing the timeout and the stop token, then
/// kills whatever is left of its process group.
async fn supervise(
    child: &mut tokio::process::Child,
    pgid: Option<Pid>,
    timeout: Duration,
    grace: Duration,
    stop: &CancellationToken,
) -> (End, std::io::Result<ExitStatus>) {
    enum First {
        Exited(std::io::Result<ExitStatus>),
        TimedOut,
        Stopped,
    }
    let deadline = if timeout.is_zero() {
        None
    } else {
        Instant::now().checked_add(timeout)
    };
    let timer = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    let first = tokio::select! {
        s = child.wait() => First::Exited(s),
        () = timer => First::TimedOut,
        () = stop.cancelled() => First::Stopped,
    };
    let (end, status) = match first {
        First::Exited(s) => (End::Exited, s),
        First::TimedOut => (End::TimedOut, terminate(child, pgid, grace).await),
        First::Stopped => (End::Stopped, terminate(child, pgid, grace).await),
    };
    // Leftovers in the group (e.g. `sleep 100 &`) die with the job.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    (end, status)
}

/// SIGTERM to the group, SIGKILL after `grace`.
async fn terminate(
    child: &mut tokio::process::Child,
    pgid: Option<Pid>,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    match pgid {
        Some(g) => {
            let _ = killpg(g, Signal::SIGTERM);
        }
        None => {
            let _ = child.start_kill();
        }
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            if let Some(g) = pgid {
                let _ = killpg(g, Signal::SIGKILL);
            }
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

// ---------------------------------------------------------------------------
// Attempt notes: what a crash leaves behind is killed on the next start

/// A note of a running attempt, kept in [`JobSpec::attempts_dir`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttemptNote {
    /// The job the attempt ran.
    pub job_id: String,
    /// The worker that held the attempt's lease.
    pub worker_id: String,
    /// pid of the spawned process, also its process group.
    pub pid: i32,
    /// The process's start time (field 22 of `/proc/<pid>/stat`), so a
    /// recycled pid is not mistaken for it.
    pub start_time: Option<u64>,
    /// The boot the attempt ran in: after a reboot nothing of it is alive.
    pub boot_id: Option<String>,
    /// The attempt's work dir.
    pub workdir: PathBuf,
}

fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

fn note_attempt(spec: &JobSpec, pid: u32, workdir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = spec.attempts_dir.as_ref()?;
    let pid = i32::try_from(pid).ok()?;
    let note = AttemptNote {
        job_id: spec.job_id.clone(),
        worker_id: spec.worker_id.clone(),
        pid,
        start_time: proc_start_time(pid),
        boot_id: boot_id(),
        workdir: workdir.to_owned(),
    };
    let path = dir.join(format!("{}.json", sanitize(&spec.job_id)));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let _ = std::fs::remove_file(&path);
            write_private(&path, &serde_json::to_vec(&note).unwrap_or_default())
        });
    match written {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(job_id = %spec.job_id, error = %e, "could not note the running attempt");
            None
        }
    }
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Kills what is left of the attempts noted in `dir` (a previous run of the
/// runner crashed while they ran) and removes their work dirs and notes.
/// Returns the notes, so the caller can give up their leases at once.
///
/// Called before the runner leases anything. The process group is killed
/// only if its leader is still the process noted (same boot, same start
/// time) or gone; then the group can only hold the attempt's own leftovers.
pub fn reap_interrupted(dir: &Path) -> Vec<AttemptNote> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let boot = boot_id();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let note: Option<AttemptNote> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let _ = std::fs::remove_file(&path);
        let Some(note) = note else { continue };
        let same_boot = note.boot_id.is_some() && note.boot_id == boot;
        let leader = proc_start_time(note.pid);
        if same_boot && note.pid > 1 && (leader.is_none() || leader == note.start_time) {
            let _ = killpg(Pid::from_raw(note.pid), Signal::SIGKILL);
            if leader.is_some() {
                let _ = nix::sys::signal::kill(Pid::from_raw(note.pid), Signal::SIGKILL);
            }
        }
        if note.workdir.is_absolute() && note.workdir.exists() {
            make_removable(&note.workdir, 0);
            if let Err(e) = std::fs::remove_dir_all(&note.workdir) {
                tracing::warn!(job = %note.job_id, error = %e, dir = %note.workdir.display(), "could not remove an interrupted job's work dir");
            }
        }
        tracing::warn!(job = %note.job_id, pid = note.pid, "killed the leftovers of a job attempt interrupted by a crash");
        out.push(note);
    }
    out
}

// ---------------------------------------------------------------------------
// Work dir and command

struct Workdir {
    dir: tempfile::TempDir,
    /// Canonical absolute path of `dir`.
    path: PathBuf,
    script: PathBuf,
    input: PathBuf,
    wrapper: Option<PathBuf>,
    /// A copy of the server's CA certificate, when the original lies in a
    /// hidden path (the generated one lives in the data dir).
    ca: Option<PathBuf>,
}

fn prepare_workdir(spec: &JobSpec, level: SandboxLevel) -> Result<Workdir, String> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("herald-job-");
    let dir = match &spec.work_root {
        Some(root) => {
            std::fs::create_dir_all(root)
                .map_err(|e| format!("could not create the work root {}: {e}", root.display()))?;
            builder.tempdir_in(root)
        }
        None => builder.tempdir(),
    }
    .map_err(|e| format!("could not create the job's temp dir: {e}"))?;
    let path = dir
        .path()
        .canonicalize()
        .map_err(|e| format!("could not resolve the job's temp dir: {e}"))?;
    if let Some(h) = spec.hidden.iter().find(|h| path.starts_with(h)) {
        return Err(format!(
            "the job's work dir {} lies inside {}, which jobs must not see; \
             choose a work root outside the data dir",
            path.display(),
            h.display()
        ));
    }

    let script = path.join(format!("runbook.{}", spec.kind.file_extension()));
    write_private(&script, spec.script.as_bytes())?;
    let input = path.join("input.json");
    write_private(&input, spec.input_json.as_bytes())?;
    let wrapper = if spec.kind == RunbookKind::Pwsh {
        let w = path.join("herald-wrapper.ps1");
        write_private(&w, pwsh_wrapper(&script).as_bytes())?;
        Some(w)
    } else {
        None
    };
    // The job needs the CA to call the server, but the generated one sits in
    // the (hidden) data dir: hand it a copy.
    let ca = match spec.env.iter().find(|(k, _)| k == "HERALD_CACERT") {
        Some((_, v)) if spec.hidden.iter().any(|h| Path::new(v).starts_with(h)) => {
            let pem =
                std::fs::read(v).map_err(|e| format!("could not read the server's CA {v}: {e}"))?;
            let copy = path.join("herald-ca.pem");
            write_private(&copy, &pem)?;
            Some(copy)
        }
        _ => None,
    };

    if level == SandboxLevel::Rlimits && sandbox::running_as_root() {
        // The job runs as nobody: give it its own dir and files.
        let mut paths = vec![path.clone(), script.clone(), input.clone()];
        paths.extend(wrapper.clone());
        paths.extend(ca.clone());
        for p in &paths {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY))
                .map_err(|e| format!("could not hand {} to uid {NOBODY}: {e}", p.display()))?;
        }
    }
    Ok(Workdir {
        dir,
        path,
        script,
        input,
        wrapper,
        ca,
    })
}

/// Removes the job's dir, also when the job left read-only dirs behind.
fn remove_workdir(wd: Workdir, job_id: &str) {
    let path = wd.path.clone();
    if wd.dir.close().is_ok() {
        return;
    }
    make_removable(&path, 0);
    if let Err(e) = std::fs::remove_dir_all(&path)
        && path.exists()
    {
        tracing::warn!(job_id, error = %e, dir = %path.display(), "could not remove the job's temp dir");
    }
}

fn make_removable(dir: &Path, depth: usize) {
    use std::os::unix::fs::PermissionsExt as _;
    if depth > 64 {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_removable(&entry.path(), depth + 1);
        }
    }
}

fn write_private(path: &Path, content: &[u8]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("could not create {}: {e}", path.display()))?;
    f.write_all(content)
        .map_err(|e| format!("could not write {}: {e}", path.display()))
}

/// PowerShell wrapper: parses the input, splats `parameters` (only those the
/// runbook declares, when that can be found out) and binds `-WebhookData`.
fn pwsh_wrapper(script: &Path) -> String {
    let script = script.display().to_string().replace('\'', "''");
    format!(
        r#"$__heraldInput = Get-Content -Raw -LiteralPath $env:HERALD_JOB_INPUT | ConvertFrom-Json
$__heraldRunbook = '{script}'
$__heraldDeclared = $null
try {{ $__heraldDeclared = (Get-Command -Name $__heraldRunbook -ErrorAction Stop).Parameters }} catch {{ $__heraldDeclared = $null }}
$__heraldArgs = @{{}}
if ($null -ne $__heraldInput -and $null -ne $__heraldInput.parameters) {{
    foreach ($__heraldP in $__heraldInput.parameters.PSObject.Properties) {{
        if ($null -eq $__heraldDeclared -or $__heraldDeclared.ContainsKey($__heraldP.Name)) {{
            $__heraldArgs[$__heraldP.Name] = $__heraldP.Value
        }}
    }}
}}
if ($null -ne $__heraldInput -and $null -ne $__heraldInput.WebhookData) {{
    if ($null -eq $__heraldDeclared -or $__heraldDeclared.ContainsKey('WebhookData')) {{
        $__heraldArgs['WebhookData'] = $__heraldInput.WebhookData
    }}
}}
$global:LASTEXITCODE = 0
try {{
    & $__heraldRunbook @__heraldArgs
}} catch {{
    Write-Error -ErrorRecord $_
    exit 1
}}
if ($LASTEXITCODE -is [int] -and $LASTEXITCODE -ne 0) {{ exit $LASTEXITCODE }}
exit 0
"#
    )
}

/// The interpreter invocation, without any sandbox.
fn interpreter_argv(spec: &JobSpec, wd: &Workdir) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![spec.interpreter.as_os_str().to_owned()];
    match (&wd.wrapper, spec.kind) {
        (Some(wrapper), RunbookKind::Pwsh) => {
            v.extend(["-NoProfile", "-NonInteractive", "-File"].map(OsString::from));
            v.push(wrapper.as_os_str().to_owned());
        }
        _ => v.push(wd.script.as_os_str().to_owned()),
    }
    v
}

/// `prlimit … --` for the job.
fn prlimit_argv(spec: &JobSpec, prlimit: &Path, with_nproc: bool) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        prlimit.as_os_str().to_owned(),
        format!("--nofile={NOFILE_LIMIT}").into(),
        format!("--fsize={FSIZE_LIMIT}").into(),
    ];
    if with_nproc {
        v.push(format!("--nproc={NPROC_LIMIT}").into());
    }
    let as_ok = matches!(
        spec.kind,
        RunbookKind::Bash | RunbookKind::Sh | RunbookKind::Python3
    );
    if as_ok
        && spec.memory_limit_mb > 0
        && let Some(bytes) = spec.memory_limit_mb.checked_mul(1024 * 1024)
    {
        v.push(format!("--as={bytes}").into());
    }
    v.push("--".into());
    v
}

/// Full argv (sandbox wrapper + interpreter) for `level`.
async fn job_argv(
    spec: &JobSpec,
    level: SandboxLevel,
    wd: &Workdir,
) -> Result<Vec<OsString>, String> {
    let inner = interpreter_argv(spec, wd);
    let missing = |e: String| format!("the {level} sandbox is not usable: {e}");
    let mut argv: Vec<OsString> = Vec::new();
    // The job dies with its runner: a parent-death SIGKILL (set by setpriv,
    // since this crate has no unsafe code for a pre_exec prctl) on the
    // process the runner spawns. At `rlimits` it is set after the uid
    // switch, which would clear it; at `unshare` and `bwrap` that process is
    // the wrapper, whose own --kill-child / --die-with-parent pass the kill on
    // to the PID namespace, where the death of its init kills everything.
    let pdeathsig = || -> Result<Vec<OsString>, String> {
        Ok(vec![
            sandbox::tool("setpriv").map_err(missing)?.into_os_string(),
            "--pdeathsig".into(),
            "KILL".into(),
        ])
    };
    match level {
        SandboxLevel::None => match pdeathsig() {
            Ok(p) => argv.extend(p),
            Err(e) => {
                tracing::warn!(job_id = %spec.job_id, error = %e, "the job will not die with the server");
            }
        },
        SandboxLevel::Rlimits => {
            let root = sandbox::running_as_root();
            argv.extend(sandbox::setpriv_prefix(
                &sandbox::tool("setpriv").map_err(missing)?,
                root,
            ));
            // RLIMIT_NPROC counts every process of the uid: only sensible
            // once the job runs as its own uid.
            argv.extend(prlimit_argv(
                spec,
                &sandbox::tool("prlimit").map_err(missing)?,
                root,
            ));
        }
        SandboxLevel::Unshare => {
            argv.extend(pdeathsig()?);
            argv.push(sandbox::tool("unshare").map_err(missing)?.into_os_string());
            argv.extend(sandbox::unshare_options(
                sandbox::unshare_mount_proc_works().await,
                spec.allow_network,
            ));
            let keep: Vec<PathBuf> = spec
                .path_dirs
                .iter()
                .filter(|p| !spec.hidden.iter().any(|h| p.starts_with(h)))
                .cloned()
                .collect();
            argv.extend(sandbox::unshare_stage(
                &sandbox::tool("sh").map_err(missing)?,
                &sandbox::tool("mount").map_err(missing)?,
                &wd.path,
                &spec.hidden,
                &keep,
            ));
            argv.extend(prlimit_argv(
                spec,
                &sandbox::tool("prlimit").map_err(missing)?,
                false,
            ));
        }
        SandboxLevel::Bwrap => {
            argv.extend(pdeathsig()?);
            argv.push(sandbox::tool("bwrap").map_err(missing)?.into_os_string());
            let wdir = wd.path.as_os_str();
            for a in ["--ro-bind", "/", "/"] {
                argv.push(a.into());
            }
            // The data dir and key files: an empty read-only tmpfs over each
            // dir, /dev/null over each file (bwrap applies these in order,
            // so the binds below still reach the work dir).
            for h in &spec.hidden {
                if h.is_dir() {
                    argv.extend([OsString::from("--tmpfs"), h.clone().into_os_string()]);
                    argv.extend([OsString::from("--remount-ro"), h.clone().into_os_string()]);
                } else if h.exists() {
                    argv.extend([
                        OsString::from("--ro-bind"),
                        "/dev/null".into(),
                        h.clone().into_os_string(),
                    ]);
                }
            }
            for a in ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"] {
                argv.push(a.into());
            }
            argv.extend([OsString::from("--bind"), wdir.to_owned(), wdir.to_owned()]);
            // /tmp is private to the job; files the job is handed there (the
            // server's CA in a temp data dir, a herald binary) are bound back.
            let handed = spec
                .env
                .iter()
                .filter(|(k, _)| k == "HERALD_CACERT")
                .map(|(_, v)| std::path::PathBuf::from(v))
                .chain(spec.path_dirs.iter().cloned());
            for p in handed {
                let hidden = spec.hidden.iter().any(|h| p.starts_with(h));
                if p.starts_with("/tmp") && !hidden && p.exists() && !wd.path.starts_with(&p) {
                    argv.extend([
                        OsString::from("--ro-bind"),
                        p.clone().into_os_string(),
                        p.into_os_string(),
                    ]);
                }
            }
            argv.push("--unshare-all".into());
            if spec.allow_network {
                argv.push("--share-net".into());
            }
            argv.extend([
                OsString::from("--die-with-parent"),
                "--new-session".into(),
                "--chdir".into(),
                wdir.to_owned(),
                "--".into(),
            ]);
            argv.extend(prlimit_argv(
                spec,
                &sandbox::tool("prlimit").map_err(missing)?,
                false,
            ));
        }
    }
    argv.extend(inner);
    Ok(argv)
}

/// The job's whole environment (nothing of the server's own leaks).
fn job_env(spec: &JobSpec, wd: &Workdir) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    for (k, v) in &spec.env {
        if k == "HERALD_CACERT"
            && let Some(ca) = &wd.ca
        {
            env.push((k.into(), ca.as_os_str().to_owned()));
            continue;
        }
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            tracing::warn!(job_id = %spec.job_id, name = %k.replace('\0', "\\0"), "skipping an invalid environment variable");
            continue;
        }
        env.push((k.into(), v.into()));
    }
    let mut path = OsString::new();
    for d in &spec.path_dirs {
        let s = d.as_os_str();
        if s.is_empty() || s.as_encoded_bytes().contains(&b':') {
            continue;
        }
        path.push(s);
        path.push(":");
    }
    path.push("/usr/local/bin:/usr/bin:/bin");
    let wdir = wd.path.as_os_str().to_owned();
    env.extend([
        ("PATH".into(), path),
        ("HOME".into(), wdir.clone()),
        ("TMPDIR".into(), wdir),
        ("LANG".into(), "C.UTF-8".into()),
        ("HERALD_JOB_INPUT".into(), wd.input.as_os_str().to_owned()),
        ("HERALD_JOB_ID".into(), spec.job_id.clone().into()),
        ("HERALD_RECORDS_FD".into(), RECORDS_FD.to_string().into()),
    ]);
    env
}

async fn build_command(
    spec: &JobSpec,
    level: SandboxLevel,
    wd: &Workdir,
) -> Result<tokio::process::Command, String> {
    if !spec.interpreter.is_absolute() || !spec.interpreter.is_file() {
        return Err(format!(
            "the {} interpreter {} was not found",
            spec.kind,
            spec.interpreter.display()
        ));
    }
    let argv = job_argv(spec, level, wd).await?;
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(job_env(spec, wd))
        .current_dir(&wd.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    Ok(cmd)
}

// ---------------------------------------------------------------------------
// Records: masking, caps, line splitting

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Replaces secret values by [`MASK`].
struct Masker {
    /// Non-empty, deduplicated, longest first.
    masks: Vec<String>,
    /// Longest mask length considered when splitting lines.
    split_guard: usize,
}

impl Masker {
    fn new(masks: &[String]) -> Self {
        let mut v: Vec<String> = Vec::new();
        for m in masks {
            if m.is_empty() {
                continue;
            }
            v.push(m.clone());
            // Records are lines: mask each line of a multi-line secret too.
            if m.contains('\n') {
                for line in m.lines() {
                    let line = line.trim_end_matches('\r');
                    if line.len() >= 4 {
                        v.push(line.to_string());
                    }
                }
            }
        }
        v.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        v.dedup();
        let split_guard = v
            .iter()
            .map(String::len)
            .filter(|l| *l <= MAX_SPLIT_GUARD)
            .max()
            .unwrap_or(0);
        Masker {
            masks: v,
            split_guard,
        }
    }

    fn mask_str(&self, s: String) -> String {
        let mut out = s;
        for m in &self.masks {
            if out.contains(m.as_str()) {
                out = out.replace(m.as_str(), MASK);
            }
        }
        out
    }

    fn mask_value(&self, v: Value) -> Value {
        if self.masks.is_empty() {
            return v;
        }
        match v {
            Value::String(s) => Value::String(self.mask_str(s)),
            Value::Number(n) => {
                let s = n.to_string();
                if self.masks.iter().any(|m| s.contains(m.as_str())) {
                    Value::String(self.mask_str(s))
                } else {
                    Value::Number(n)
                }
            }
            Value::Array(a) => Value::Array(a.into_iter().map(|v| self.mask_value(v)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| (self.mask_str(k), self.mask_value(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// Where to split a too-long line near `max`: on a UTF-8 boundary and
    /// never inside a secret.
    fn choose_cut(&self, buf: &[u8], max: usize) -> usize {
        let mut cut = max.min(buf.len());
        let mut back = 0;
        while cut > 1 && back < 3 && cut < buf.len() && (buf[cut] & 0xC0) == 0x80 {
            cut -= 1;
            back += 1;
        }
        if cut < buf.len() && (buf[cut] & 0xC0) == 0x80 {
            cut = max.min(buf.len());
        }
        for _ in 0..8 {
            let mut moved = false;
            for m in self.masks.iter().map(String::as_bytes) {
                if m.len() < 2 || m.len() > MAX_SPLIT_GUARD {
                    continue;
                }
                let lo = cut.saturating_sub(m.len() - 1);
                let hi = (cut + m.len() - 1).min(buf.len());
                if hi <= lo || hi - lo < m.len() {
                    continue;
                }
                if let Some(off) = buf[lo..hi].windows(m.len()).position(|w| w == m) {
                    let start = lo + off;
                    cut = if start > 0 { start } else { m.len() };
                    moved = true;
                    break;
                }
            }
            if !moved {
                break;
            }
        }
        cut.clamp(1, buf.len().max(1))
    }
}

/// Splits a byte stream into lines of at most [`MAX_LINE_BYTES`].
struct LineSplitter {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            start: 0,
            max: max.max(1),
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    fn next_segment(&mut self, eof: bool, masker: &Masker) -> Option<Vec<u8>> {
        let live = &self.buf[self.start..];
        if live.is_empty() {
            return None;
        }
        let scan = live.len().min(self.max + 1);
        if let Some(pos) = live[..scan].iter().position(|&b| b == b'\n') {
            let mut line = live[..pos].to_vec();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.start += pos + 1;
            return Some(line);
        }
        let need = self.max + masker.split_guard.saturating_sub(1);
        if live.len() > self.max && (live.len() >= need || eof) {
            let cut = masker.choose_cut(live, self.max);
            let seg = live[..cut].to_vec();
            self.start += cut;
            return Some(seg);
        }
        if eof {
            let seg = live.to_vec();
            self.start = self.buf.len();
            return Some(seg);
        }
        None
    }
}

#[derive(Default, Clone, Copy)]
struct StreamCount {
    bytes: usize,
    truncated: bool,
}

/// Masks, caps and sends records.
struct Sink {
    tx: mpsc::Sender<Record>,
    masker: Masker,
    limit: usize,
    counts: Mutex<[StreamCount; 6]>,
}

impl Sink {
    fn new(tx: mpsc::Sender<Record>, masks: &[String], limit: usize) -> Self {
        Sink {
            tx,
            masker: Masker::new(masks),
            limit,
            counts: Mutex::new([StreamCount::default(); 6]),
        }
    }

    async fn emit(&self, stream: StreamType, text: String, value: Option<Value>) {
        let text = self.masker.mask_str(text);
        let value = value.map(|v| self.masker.mask_value(v));
        let size = text.len()
            + value
                .as_ref()
                .and_then(|v| serde_json::to_vec(v).ok())
                .map_or(0, |b| b.len());
        let record = {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let c = &mut counts[stream.index()];
            if c.truncated {
                return;
            }
            if c.bytes.saturating_add(size) > self.limit {
                c.truncated = true;
                Record {
                    stream,
                    text: format!("... stream truncated at {} bytes", self.limit),
                    value: None,
                    time_ms: now_ms(),
                }
            } else {
                c.bytes += size;
                Record {
                    stream,
                    text,
                    value,
                    time_ms: now_ms(),
                }
            }
        };
        // A dropped receiver only means nobody keeps the records.
        let _ = self.tx.send(record).await;
    }

    async fn line(&self, source: Source, seg: Vec<u8>) {
        let text = match String::from_utf8(seg) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        match source {
            Source::Stdout => self.emit(StreamType::Output, text, None).await,
            Source::Stderr => self.emit(StreamType::Error, text, None).await,
            Source::Fd3 => {
                if text.trim().is_empty() {
                    return;
                }
                match parse_fd3(&text) {
                    Some((stream, t, value)) => self.emit(stream, t, value).await,
                    None => {
                        self.emit(
                            StreamType::Warning,
                            format!("fd-3 line not understood (expected JSON like {{\"stream\":\"Warning\",\"text\":\"...\"}}): {text}"),
                            None,
                        )
                        .await
                    }
                }
            }
        }
    }
}

/// `{"stream":"Warning","text":"...","value":{...}}` → record parts.
fn parse_fd3(line: &str) -> Option<(StreamType, String, Option<Value>)> {
    let Value::Object(mut o) = serde_json::from_str::<Value>(line.trim()).ok()? else {
        return None;
    };
    let stream = match o.get("stream") {
        Some(Value::String(s)) => StreamType::parse(s)?,
        _ => return None,
    };
    let text = match o.remove("text") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    let value = match o.remove("value") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    };
    Some((stream, text, value))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Stdout,
    Stderr,
    Fd3,
}

/// Reads one of the job's outputs to its end (or until shortly after the
/// process exited, when something else keeps it open) and emits its lines.
async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    source: Source,
    sink: &Sink,
    exited: &CancellationToken,
) {
    let Some(mut reader) = reader else {
        return;
    };
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK];
    let soft = async {
        exited.cancelled().await;
        tokio::time::sleep(DRAIN_AFTER_EXIT).await;
    };
    tokio::pin!(soft);
    // Set once the soft deadline passed: from then on only data that is
    // already there is read, and nothing after the hard deadline.
    let mut hard: Option<Instant> = None;
    loop {
        let read = match hard {
            None => tokio::select! {
                biased;
                r = reader.read(&mut chunk) => r,
                () = &mut soft => {
                    hard = Some(Instant::now() + DRAIN_AFTER_EXIT);
                    continue;
                }
            },
            Some(h) => {
                if Instant::now() >= h {
                    break;
                }
                tokio::select! {
                    biased;
                    r = reader.read(&mut chunk) => r,
                    () = std::future::ready(()) => break,
                }
            }
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                splitter.push(&chunk[..n]);
                while let Some(seg) = splitter.next_segment(false, &sink.masker) {
                    sink.line(source, seg).await;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    while let Some(seg) = splitter.next_segment(true, &sink.masker) {
        sink.line(source, seg).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    fn bash_spec(script: &str) -> JobSpec {
        let bash = sandbox::find_interpreter(RunbookKind::Bash).expect("bash on PATH");
        let mut spec = JobSpec::new("job-test", RunbookKind::Bash, bash, script);
        spec.timeout = Duration::from_secs(20);
        spec.grace = Duration::from_secs(1);
        spec
    }

    async fn run_collect(spec: JobSpec, level: SandboxLevel) -> (ExecResult, Vec<Record>) {
        run_with_stop(spec, level, CancellationToken::new()).await
    }

    async fn run_with_stop(
        spec: JobSpec,
        level: SandboxLevel,
        stop: CancellationToken,
    ) -> (ExecResult, Vec<Record>) {
        let (tx, mut rx) = mpsc::channel(64);
        let collector = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(r) = rx.recv().await {
                v.push(r);
            }
            v
        });
        let res = run(spec, level, tx, stop, |_| {}).await;
        let recs = collector.await.unwrap_or_default();
        (res, recs)
    }

    fn texts(recs: &[Record], stream: StreamType) -> Vec<String> {
        recs.iter()
            .filter(|r| r.stream == stream)
            .map(|r| r.text.clone())
            .collect()
    }

    #[test]
    fn stream_type_names() {
        for t in StreamType::ALL {
            assert_eq!(StreamType::parse(&t.as_str().to_lowercase()), Some(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap_or_default(),
                format!("\"{}\"", t.as_str())
            );
        }
        assert_eq!(StreamType::parse("Any"), None);
    }

    #[test]
    fn splitter_splits_long_lines_and_keeps_secrets_whole() {
        let masker = Masker::new(&["SECRET".to_string()]);
        let mut s = LineSplitter::new(10);
        s.push(b"abcdefgSECRETxyz\nshort\r\n");
        let mut segs = Vec::new();
        while let Some(seg) = s.next_segment(true, &masker) {
            segs.push(String::from_utf8_lossy(&seg).into_owned());
        }
        assert_eq!(segs, vec!["abcdefg", "SECRETxyz", "short"]);
        // UTF-8 boundary: é is 2 bytes, never cut in half.
        let mut s = LineSplitter::new(5);
        s.push("aaaaé".as_bytes());
        let a = s.next_segment(true, &Masker::new(&[])).unwrap_or_default();
        assert_eq!(a, b"aaaa");
    }

    #[test]
    fn masking_values_and_multiline_secrets() {
        let m = Masker::new(&[
            "pw".to_string(),
            "pw123".to_string(),
            String::new(),
            "-----BEGIN-----\nabcdefgh\n-----END-----".to_string(),
        ]);
        assert_eq!(m.mask_str("x pw123 pw".into()), "x ***** *****");
        assert_eq!(m.mask_str("abcdefgh".into()), "*****");
        let v = m.mask_value(serde_json::json!({"a":["pw123", 1], "pw": {"b":"zz pw"}}));
        assert_eq!(
            v,
            serde_json::json!({"a":["*****", 1], "*****": {"b":"zz *****"}})
        );
    }

    #[test]
    fn fd3_parsing() {
        let (s, t, v) =
            parse_fd3(r#"{"stream":"verbose","text":"hi","value":{"a":1}}"#).expect("valid");
        assert_eq!((s, t.as_str()), (StreamType::Verbose, "hi"));
        assert_eq!(v, Some(serde_json::json!({"a":1})));
        assert!(parse_fd3("not json").is_none());
        assert!(parse_fd3(r#"{"stream":"Any","text":"x"}"#).is_none());
        assert!(parse_fd3(r#"[1,2]"#).is_none());
    }

    #[tokio::test]
    async fn stdout_stderr_in_order_and_exit_codes() {
        let (res, recs) = run_collect(
            bash_spec("echo one; echo two; echo oops >&2; printf 'no newline'"),
            SandboxLevel::None,
        )
        .await;
        assert_eq!(res.outcome, Outcome::Completed);
        assert_eq!(res.exit_code, Some(0));
        assert!(res.pid.is_some());
        assert_eq!(
            texts(&recs, StreamType::Output),
            ["one", "two", "no newline"]
        );
        assert_eq!(texts(&recs, StreamType::Error), ["oops"]);

        let (res, _) = run_collect(bash_spec("exit 3"), SandboxLevel::None).await;
        assert_eq!(
            res.outcome,
            Outcome::Failed {
                reason: "exit code 3".into()
            }
        );
        assert_eq!(res.exit_code, Some(3));

        let (res, _) = run_collect(bash_spec("kill -KILL $$"), SandboxLevel::None).await;
        assert_eq!(
            res.outcome,
            Outcome::Failed {
                reason: "killed by signal SIGKILL".into()
            }
        );
    }

    #[tokio::test]
    async fn spawn_error_is_a_clear_failure() {
        let mut spec = bash_spec("true");
        spec.interpreter = PathBuf::from("/nonexistent/bash");
        let (res, _) = run_collect(spec, SandboxLevel::None).await;
        match res.outcome {
            Outcome::Failed { reason } => assert!(reason.contains("/nonexistent/bash"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(res.pid, None);
    }

    #[tokio::test]
    async fn fd3_records_input_env_and_masking() {
        let script = r#"
echo '{"stream":"Warning","text":"careful","value":{"k":"v"}}' >&3
echo '{"stream":"progress","text":"half"}' >&"$HERALD_RECORDS_FD"
echo 'this is not json' >&3
echo '{"stream":"Nope","text":"x"}' >&3
cat "$HERALD_JOB_INPUT"; echo
echo "secret is hunter2 ok"
echo '{"stream":"Verbose","text":"v hunter2","value":{"p":"hunter2"}}' >&3
env | cut -d= -f1 | sort | tr '\n' ' '; echo
pwd; echo "HOME=$HOME"
"#;
        let mut spec = bash_spec(script);
        spec.input_json = r#"{"parameters":{"Vault":"payments"}}"#.into();
        spec.env = vec![("HERALD_ADDR".into(), "https://h:1".into())];
        spec.masks = vec!["hunter2".into()];
        spec.path_dirs = vec![PathBuf::from("/opt/herald/bin")];
        let (res, recs) = run_collect(spec, SandboxLevel::None).await;
        assert_eq!(res.outcome, Outcome::Completed, "{recs:?}");

        let warnings: Vec<&Record> = recs
            .iter()
            .filter(|r| r.stream == StreamType::Warning)
            .collect();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert_eq!(warnings[0].text, "careful");
        assert_eq!(warnings[0].value, Some(serde_json::json!({"k":"v"})));
        assert!(warnings[1].text.contains("this is not json"));
        assert!(warnings[2].text.contains("Nope"));
        assert_eq!(texts(&recs, StreamType::Progress), ["half"]);
        let verbose: Vec<&Record> = recs
            .iter()
            .filter(|r| r.stream == StreamType::Verbose)
            .collect();
        assert_eq!(verbose[0].text, "v *****");
        assert_eq!(verbose[0].value, Some(serde_json::json!({"p":"*****"})));

        let out = texts(&recs, StreamType::Output);
        assert_eq!(out[0], r#"{"parameters":{"Vault":"payments"}}"#);
        assert_eq!(out[1], "secret is ***** ok");
        assert!(!recs.iter().any(|r| r.text.contains("hunter2")));
        let names: Vec<&str> = out[2].split_whitespace().collect();
        let allowed = [
            "HERALD_ADDR",
            "HERALD_JOB_ID",
            "HERALD_JOB_INPUT",
            "HERALD_RECORDS_FD",
            "HOME",
            "LANG",
            "PATH",
            "TMPDIR",
            "PWD",
            "SHLVL",
            "_",
        ];
        for n in &names {
            assert!(allowed.contains(n), "unexpected env var {n} in {names:?}");
        }
        assert!(names.contains(&"HERALD_ADDR"));
        assert!(!names.contains(&"CARGO"));
        assert!(out[3].contains("herald-job-"), "{}", out[3]);
        assert_eq!(out[4], format!("HOME={}", out[3]));
        // The temp dir is gone afterwards.
        assert!(!Path::new(&out[3]).exists());
    }

    #[tokio::test]
    async fn path_has_path_dirs_first() {
        let mut spec = bash_spec("echo \"$PATH\"");
        spec.path_dirs = vec![PathBuf::from("/opt/herald/bin"), PathBuf::from("/bad:dir")];
        let (_, recs) = run_collect(spec, SandboxLevel::None).await;
        assert_eq!(
            texts(&recs, StreamType::Output),
            ["/opt/herald/bin:/usr/local/bin:/usr/bin:/bin"]
        );
    }

    #[tokio::test]
    async fn stream_limit_truncates_once() {
        let mut spec = bash_spec(
            "for i in $(seq 1 200); do echo line-$i; done; echo err >&2; head -c 200000 /dev/zero | tr '\\0' 'x'",
        );
        spec.stream_limit = 100;
        let (res, recs) = run_collect(spec, SandboxLevel::None).await;
        assert_eq!(res.outcome, Outcome::Completed);
        let out = texts(&recs, StreamType::Output);
        assert_eq!(
            out.last().map(String::as_str),
            Some("... stream truncated at 100 bytes")
        );
        assert_eq!(out.iter().filter(|t| t.contains("truncated")).count(), 1);
        assert!(out.len() < 20);
        assert_eq!(texts(&recs, StreamType::Error), ["err"]);
    }

    #[tokio::test]
    async fn long_lines_are_split() {
        let spec = bash_spec("head -c 150000 /dev/zero | tr '\\0' 'y'; echo; echo end");
        let (_, recs) = run_collect(spec, SandboxLevel::None).await;
        let out = texts(&recs, StreamType::Output);
        let lens: Vec<usize> = out.iter().map(String::len).collect();
        assert_eq!(
            lens,
            [
                MAX_LINE_BYTES,
                MAX_LINE_BYTES,
                150000 - 2 * MAX_LINE_BYTES,
                3
            ]
        );
    }

    #[tokio::test]
    async fn invalid_utf8_is_lossy() {
        let spec = bash_spec("printf 'a\\xffb\\n'");
        let (_, recs) = run_collect(spec, SandboxLevel::None).await;
        assert_eq!(texts(&recs, StreamType::Output), ["a\u{fffd}b"]);
    }

    #[tokio::test]
    async fn timeout_with_ignored_sigterm() {
        let mut spec = bash_spec("trap '' TERM; echo ready; sleep 30");
        spec.timeout = Duration::from_millis(500);
        spec.grace = Duration::from_millis(500);
        let t = StdInstant::now();
        let (res, recs) = run_collect(spec, SandboxLevel::None).await;
        let took = t.elapsed();
        assert_eq!(res.outcome, Outcome::TimedOut);
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(took >= Duration::from_millis(900), "took {took:?}");
        assert_eq!(texts(&recs, StreamType::Output), ["ready"]);
    }

    #[tokio::test]
    async fn stop_token_stops() {
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            s2.cancel();
        });
        let t = StdInstant::now();
        let (res, _) = run_with_stop(bash_spec("sleep 30"), SandboxLevel::None, stop).await;
        assert_eq!(res.outcome, Outcome::Stopped);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

        // Already cancelled: never starts.
        let stop = CancellationToken::new();
        stop.cancel();
        let (res, _) = run_with_stop(bash_spec("echo no"), SandboxLevel::None, stop).await;
        assert_eq!(res.outcome, Outcome::Stopped);
        assert_eq!(res.pid, None);
    }

    #[tokio::test]
    async fn background_children_are_killed() {
        let t = StdInstant::now();
        let (res, recs) = run_collect(
            bash_spec("sleep 100 & echo $! > \"$HOME/bg.pid\"; echo bg=$!; echo done"),
            SandboxLevel::None,
        )
        .await;
        assert_eq!(res.outcome, Outcome::Completed);
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        let out = texts(&recs, StreamType::Output);
        assert_eq!(out.last().map(String::as_str), Some("done"));
        let bg: i32 = out[0].trim_start_matches("bg=").parse().unwrap_or(0);
        assert!(bg > 0);
        // The background sleep is gone (a zombie reaped by init at worst).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stat = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z"), "{stat}");

        // A grandchild that escapes the group and holds stdout open: `run`
        // still returns about a second after the job exited.
        let t = StdInstant::now();
        let (res, recs) = run_collect(
            bash_spec("setsid sleep 3 & echo escaped"),
            SandboxLevel::None,
        )
        .await;
        assert_eq!(res.outcome, Outcome::Completed);
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(texts(&recs, StreamType::Output), ["escaped"]);
    }

    #[tokio::test]
    async fn python3_job() {
        let Some(py) = sandbox::find_interpreter(RunbookKind::Python3) else {
            return;
        };
        let mut spec = JobSpec::new(
            "py",
            RunbookKind::Python3,
            py,
            "import json, os, sys\n\
             data = json.load(open(os.environ['HERALD_JOB_INPUT']))\n\
             print('vault', data['parameters']['Vault'])\n\
             os.write(3, b'{\"stream\":\"Debug\",\"text\":\"dbg\"}\\n')\n\
             print('bad', file=sys.stderr)\n",
        );
        spec.input_json = r#"{"parameters":{"Vault":"payments"}}"#.into();
        let (res, recs) = run_collect(spec, SandboxLevel::None).await;
        assert_eq!(res.outcome, Outcome::Completed, "{recs:?}");
        assert_eq!(texts(&recs, StreamType::Output), ["vault payments"]);
        assert_eq!(texts(&recs, StreamType::Error), ["bad"]);
        assert_eq!(texts(&recs, StreamType::Debug), ["dbg"]);
    }

    #[tokio::test]
    async fn node_job_and_read_only_leftovers() {
        fn assert_send<T: Send>(_: &T) {}
        let (tx, _rx) = mpsc::channel(1);
        let fut = run(
            bash_spec("true"),
            SandboxLevel::None,
            tx,
            CancellationToken::new(),
            |_| {},
        );
        assert_send(&fut);
        drop(fut);

        let (_, recs) = run_collect(
            bash_spec("mkdir -p ro/sub && touch ro/sub/f && chmod 500 ro/sub ro && pwd"),
            SandboxLevel::None,
        )
        .await;
        let dir = texts(&recs, StreamType::Output).pop().unwrap_or_default();
        assert!(!dir.is_empty() && !Path::new(&dir).exists(), "{dir}");

        let Some(node) = sandbox::find_interpreter(RunbookKind::Node) else {
            return;
        };
        let spec = JobSpec::new(
            "n",
            RunbookKind::Node,
            node,
            "const fs = require('fs');\n\
             const input = JSON.parse(fs.readFileSync(process.env.HERALD_JOB_INPUT, 'utf8'));\n\
             console.log('n', input.a);\n\
             fs.writeSync(3, JSON.stringify({stream: 'Warning', text: 'from node'}) + '\\n');\n",
        );
        let spec = JobSpec {
            input_json: r#"{"a":5}"#.into(),
            ..spec
        };
        let (res, recs) = run_collect(spec, SandboxLevel::None).await;
        assert_eq!(res.outcome, Outcome::Completed, "{recs:?}");
        assert_eq!(texts(&recs, StreamType::Output), ["n 5"]);
        assert_eq!(texts(&recs, StreamType::Warning), ["from node"]);
    }

    #[test]
    fn pwsh_command_line() {
        let wd = Workdir {
            dir: tempfile::tempdir().expect("tempdir"),
            path: PathBuf::from("/w"),
            script: PathBuf::from("/w/runbook.ps1"),
            input: PathBuf::from("/w/input.json"),
            wrapper: Some(PathBuf::from("/w/herald-wrapper.ps1")),
            ca: None,
        };
        let spec = JobSpec::new("p", RunbookKind::Pwsh, PathBuf::from("/usr/bin/pwsh"), "");
        let argv = interpreter_argv(&spec, &wd);
        assert_eq!(
            argv,
            [
                "/usr/bin/pwsh",
                "-NoProfile",
                "-NonInteractive",
                "-File",
                "/w/herald-wrapper.ps1"
            ]
            .map(OsString::from)
        );
        let w = pwsh_wrapper(Path::new("/w/it's/runbook.ps1"));
        assert!(w.contains("'/w/it''s/runbook.ps1'"));
        assert!(w.contains("ConvertFrom-Json"));
        assert!(w.contains("'WebhookData'"));
        // node and pwsh get no RLIMIT_AS.
        let p = prlimit_argv(&spec, Path::new("/usr/bin/prlimit"), false);
        assert!(!p.iter().any(|a| a.to_string_lossy().starts_with("--as=")));
    }

    /// Every level that works here runs a job with fd 3, input and a
    /// writable job dir; as root the rlimits level runs as 65534.
    #[tokio::test]
    async fn every_working_level() {
        let script = r#"
id -u
cat "$HERALD_JOB_INPUT"; echo
echo '{"stream":"Warning","text":"w"}' >&3
echo hello > "$HOME/out.txt" && cat "$HOME/out.txt"
echo err >&2
"#;
        for level in SandboxLevel::STRONGEST_FIRST {
            if sandbox::probe(level.as_str()).await.is_err() {
                eprintln!("level {level} not available here, skipped");
                continue;
            }
            let mut spec = bash_spec(script);
            spec.input_json = r#"{"x":1}"#.into();
            let (res, recs) = run_collect(spec, level).await;
            assert_eq!(res.outcome, Outcome::Completed, "{level}: {recs:?}");
            assert_eq!(res.level, level);
            let out = texts(&recs, StreamType::Output);
            assert_eq!(out[1..], [r#"{"x":1}"#, "hello"], "{level}: {recs:?}");
            if level == SandboxLevel::Rlimits && sandbox::running_as_root() {
                assert_eq!(out[0], "65534");
            }
            assert_eq!(texts(&recs, StreamType::Warning), ["w"], "{level}");
            assert_eq!(texts(&recs, StreamType::Error), ["err"], "{level}");

            // Stop works at every level, including the child's children.
            let stop = CancellationToken::new();
            let s2 = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                s2.cancel();
            });
            let t = StdInstant::now();
            let (res, _) = run_with_stop(bash_spec("sleep 30 & sleep 30"), level, stop).await;
            assert_eq!(res.outcome, Outcome::Stopped, "{level}");
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{level}: {:?}",
                t.elapsed()
            );
        }
    }

    /// A fake data dir as the server leaves it: 0700, keys and database 0600.
    fn fake_data_dir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("herald-data-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("tls")).expect("tls dir");
        for f in ["master.key", "herald.db", "tls/ca.key", "tls/server.key"] {
            write_private(&d.join(f), b"SECRET-CONTENT\n").expect("write");
        }
        std::fs::write(d.join("tls/ca.pem"), b"PUBLIC-CA\n").expect("ca");
        for p in [d.to_path_buf(), d.join("tls")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        dir
    }

    /// What a hostile runbook tries: find the data dir by searching, read
    /// the keys and the database, write into the data dir, read the
    /// server's environment. Prints one line per success.
    const ESCAPE_SCRIPT: &str = r#"
d=$(sed -n 's/.*"dataDir":"\([^"]*\)".*/\1/p' "$HERALD_JOB_INPUT")
p=$(sed -n 's/.*"serverPid":\([0-9]*\).*/\1/p' "$HERALD_JOB_INPUT")
for f in $( (find /tmp -maxdepth 3 \( -name master.key -o -name herald.db -o -name ca.key -o -name server.key \) 2>/dev/null; for n in master.key herald.db tls/ca.key tls/server.key; do echo "$d/$n"; done) | sort -u); do
  if grep -q SECRET-CONTENT "$f" 2>/dev/null; then echo "READ $f"; fi
done
if echo x > "$d/planted" 2>/dev/null; then echo "WROTE $d/planted"; fi
if echo x > "$d/tls/planted" 2>/dev/null; then echo "WROTE $d/tls/planted"; fi
if echo x > /usr/herald-planted 2>/dev/null; then echo "WROTE /usr"; rm -f /usr/herald-planted; fi
if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -q '^CARGO'; then echo "ENV server"; fi
echo "ca=$(cat "$HERALD_CACERT" 2>/dev/null)"
echo end
"#;

    fn escape_spec(data: &Path) -> JobSpec {
        let mut spec = bash_spec(ESCAPE_SCRIPT);
        spec.input_json = serde_json::json!({
            "dataDir": data.display().to_string(),
            "serverPid": std::process::id(),
        })
        .to_string();
        spec.env = vec![(
            "HERALD_CACERT".into(),
            data.join("tls/ca.pem").display().to_string(),
        )];
        spec.hidden = vec![data.to_path_buf()];
        spec
    }

    /// Issue 23.1: at every level but `none` a job neither reads nor writes
    /// the data dir nor reads the server's environment; `none` shows the test
    /// would see it. The job still gets the CA it needs.
    #[tokio::test]
    async fn jobs_cannot_reach_the_data_dir() {
        let data = fake_data_dir();
        let data_path = data.path().canonicalize().expect("canonical");
        for level in SandboxLevel::STRONGEST_FIRST {
            if let Err(e) = sandbox::probe(level.as_str()).await {
                eprintln!("skipped: level {level}: {e}");
                continue;
            }
            let (res, recs) = run_collect(escape_spec(&data_path), level).await;
            let out = texts(&recs, StreamType::Output);
            assert_eq!(res.outcome, Outcome::Completed, "{level}: {recs:?}");
            assert_eq!(
                out.last().map(String::as_str),
                Some("end"),
                "{level}: {out:?}"
            );
            assert!(out.contains(&"ca=PUBLIC-CA".to_owned()), "{level}: {out:?}");
            let escaped: Vec<&String> = out
                .iter()
                .filter(|l| l.starts_with("READ") || l.starts_with("WROTE") || l.starts_with("ENV"))
                .collect();
            if level == SandboxLevel::None {
                // Sanity: uncontained, the same script does get in (as root
                // it also writes anywhere).
                assert!(escaped.iter().any(|l| l.contains("master.key")), "{out:?}");
                assert!(escaped.iter().any(|l| l.starts_with("WROTE")), "{out:?}");
            } else {
                assert!(escaped.is_empty(), "{level} let the job out: {escaped:?}");
            }
            let _ = std::fs::remove_file(data_path.join("planted"));
            let _ = std::fs::remove_file(data_path.join("tls/planted"));
        }
    }

    /// Issue 23.3: an attempt note is written while the job runs, and
    /// `reap_interrupted` kills a job (and its escaped-by-group children)
    /// whose runner died, and removes its work dir.
    #[tokio::test]
    async fn interrupted_attempts_are_reaped() {
        let attempts = tempfile::tempdir().expect("tempdir");
        let mut spec = bash_spec("sleep 60 & echo started; sleep 60");
        spec.attempts_dir = Some(attempts.path().to_path_buf());
        spec.worker_id = "w1".into();
        let (tx, mut rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let job = tokio::spawn(run(spec, SandboxLevel::None, tx, stop.clone(), |_| {}));
        let first = rx.recv().await.expect("a record");
        assert_eq!(first.text, "started");
        let notes: Vec<_> = std::fs::read_dir(attempts.path())
            .expect("dir")
            .flatten()
            .collect();
        assert_eq!(notes.len(), 1);
        // Pretend the runner crashed: reap while the job runs (a runner
        // reaps before it runs anything, so this only stands in for that).
        let reaped = reap_interrupted(attempts.path());
        assert_eq!(reaped.len(), 1);
        assert_eq!(reaped[0].job_id, "job-test");
        assert_eq!(reaped[0].worker_id, "w1");
        assert!(!reaped[0].workdir.exists(), "work dir removed");
        let pid = reaped[0].pid;
        let res = tokio::time::timeout(Duration::from_secs(3), job)
            .await
            .expect("the job died at once")
            .expect("join");
        assert_eq!(
            res.outcome,
            Outcome::Failed {
                reason: "killed by signal SIGKILL".into()
            }
        );
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z"), "{stat}");
        assert!(reap_interrupted(attempts.path()).is_empty());
    }

    /// Spawn overhead per level: `cargo test -p herald-automation --lib
    /// exec::tests::overhead -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn overhead() {
        for level in SandboxLevel::STRONGEST_FIRST {
            if sandbox::probe(level.as_str()).await.is_err() {
                continue;
            }
            let mut times = Vec::new();
            for _ in 0..50 {
                let t = StdInstant::now();
                let (res, _) = run_collect(bash_spec("echo hi"), level).await;
                times.push(t.elapsed());
                assert_eq!(res.outcome, Outcome::Completed);
            }
            times.sort();
            eprintln!(
                "{level}: median {:?} (min {:?}, max {:?})",
                times[25], times[0], times[49]
            );
        }
    }
}
