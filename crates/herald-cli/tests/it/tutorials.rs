//! The user tutorials in `docs/tutorials/*.md` as tests, so the docs cannot
//! drift from the product.
//!
//! Conventions (see any tutorial):
//! - Every ```` ```sh ```` block is run; all blocks of one tutorial, in order,
//!   form one bash script (`set -Eeuo pipefail`) run in a fresh working dir.
//! - ```` ```console ```` and ```` ```text ```` blocks are for the reader only
//!   (starting `herald serve`, exports, sample output) and are not run.
//!   `bash`/`shell` fences are refused so nothing looks tested that is not.
//! - The harness starts a real `herald serve` (fresh data dir, free port) and
//!   hands the script `HERALD_ADDR`, `HERALD_TOKEN`, `HERALD_CACERT` and a
//!   `PATH` with the `herald` binary's directory first.

use crate::binary::{Herald, free_port, start, tail};
use crate::helpers::TOKEN;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Every tutorial with its test; a new file in the directory must be added.
const TUTORIALS: [&str; 4] = [
    "automation-webhooks.md",
    "event-hubs.md",
    "keyvault-events-to-automation.md",
    "webhook-event-delivery.md",
];

/// Longest a tutorial script may run before it is killed.
const SCRIPT_LIMIT: Duration = Duration::from_secs(120);

/// Printed by the script's last line: every block ran to the end.
const DONE: &str = "__HERALD_TUTORIAL_DONE__";

/// One runnable fenced block: its text and the Markdown line it starts on.
#[derive(Debug, PartialEq)]
struct ShBlock {
    line: usize,
    code: String,
}

/// The ```` ```sh ```` blocks of a Markdown text, in order. Fences may be
/// indented (list items); that indentation is removed from the block's lines,
/// as CommonMark does. Unterminated fences and shell fences under another
/// name (`bash`, `shell`, `zsh`) are errors.
fn sh_blocks(markdown: &str) -> Result<Vec<ShBlock>, String> {
    struct Open {
        fence: String,
        indent: usize,
        run: bool,
        line: usize,
        code: String,
    }
    let mut blocks = Vec::new();
    let mut open: Option<Open> = None;
    for (i, raw) in markdown.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_start_matches(' ');
        let indent = raw.len() - trimmed.len();
        match open.as_mut() {
            None => {
                let ticks = trimmed.chars().take_while(|c| *c == '`').count();
                if ticks < 3 || indent > 3 {
                    continue;
                }
                let info = trimmed[ticks..].trim();
                let lang = info.split_whitespace().next().unwrap_or("");
                if matches!(lang, "bash" | "shell" | "zsh" | "shell-session") {
                    return Err(format!(
                        "line {n}: a ```{lang} block is neither run nor marked as not run; use ```sh (run by the test) or ```console (shown only)"
                    ));
                }
                open = Some(Open {
                    fence: "`".repeat(ticks),
                    indent,
                    run: lang == "sh",
                    line: n + 1,
                    code: String::new(),
                });
            }
            Some(b) => {
                let closing = trimmed.trim_end();
                if indent <= 3 && closing.starts_with(&b.fence) && closing.chars().all(|c| c == '`')
                {
                    let b = open.take().expect("an open block");
                    if b.run {
                        blocks.push(ShBlock {
                            line: b.line,
                            code: b.code,
                        });
                    }
                    continue;
                }
                let keep = raw.len() - raw.trim_start_matches(' ').len();
                b.code.push_str(&raw[keep.min(b.indent)..]);
                b.code.push('\n');
            }
        }
    }
    match open {
        Some(b) => Err(format!(
            "line {}: a ``` block is never closed",
            b.line.saturating_sub(1)
        )),
        None => Ok(blocks),
    }
}

/// One bash script from a tutorial's blocks. An ERR trap names the Markdown
/// file and line of the command that failed; the last line proves the script
/// was not cut short by an `exit`.
fn script(file: &str, blocks: &[ShBlock]) -> String {
    let mut lines: Vec<String> = vec![
        "set -Eeuo pipefail".into(),
        "__herald_file=setup __herald_off=0".into(),
        r#"trap 'echo "tutorial failed at $__herald_file:$((LINENO + __herald_off)): $BASH_COMMAND" >&2' ERR"#
            .into(),
    ];
    for b in blocks {
        // The block's first line becomes script line `len + 2` (1-based).
        let off = b.line as i64 - (lines.len() as i64 + 2);
        lines.push(format!("__herald_file='{file}' __herald_off={off}"));
        lines.extend(b.code.lines().map(str::to_owned));
    }
    lines.push(format!("echo {DONE}"));
    lines.join("\n") + "\n"
}

fn tutorials_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/tutorials")
}

/// The newest server log `binary::start` wrote into `logs`.
fn server_log(logs: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(logs)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("stderr-"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    files
        .last()
        .map(|p| strip_ansi(&tail(p)))
        .unwrap_or_default()
}

/// The log without its colour codes (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

fn last_chars(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs one tutorial against a fresh `herald serve` started with `server_args`.
async fn run_tutorial(file: &str, min_blocks: usize, server_args: &[&str]) {
    let started = Instant::now();
    let path = tutorials_dir().join(file);
    let markdown = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let blocks = sh_blocks(&markdown).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(
        blocks.len() >= min_blocks,
        "{file} has {} ```sh blocks, expected at least {min_blocks}",
        blocks.len()
    );

    let dirs = tempfile::tempdir().expect("temp dir");
    let (data, logs, work) = (
        dirs.path().join("data"),
        dirs.path().join("logs"),
        dirs.path().join("work"),
    );
    for d in [&logs, &work] {
        std::fs::create_dir_all(d).expect("create a temp dir");
    }
    let port = free_port();
    let mut server: Herald = start(&data, port, &logs, 0, server_args).await;

    let script_path = dirs.path().join("tutorial.sh");
    std::fs::write(&script_path, script(file, &blocks)).expect("write the script");
    let (out_path, err_path) = (dirs.path().join("stdout"), dirs.path().join("stderr"));
    let herald_bin = Path::new(env!("CARGO_BIN_EXE_herald"));
    let bin_dir = herald_bin.parent().expect("the binary's directory");
    let path_var = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&script_path)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .process_group(0)
        .kill_on_drop(true);
    // Nothing of the caller's Herald setup may leak in (a login, a vault...).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HERALD_ADDR", format!("https://127.0.0.1:{port}"))
        .env("HERALD_TOKEN", TOKEN)
        .env("HERALD_CACERT", data.join("tls").join("ca.pem"))
        .env("HERALD_CONFIG_DIR", dirs.path().join("config"))
        .env("PATH", path_var)
        .env_remove("RUST_LOG");
    let mut child = cmd.spawn().expect("start bash");
    let pid = child.id();
    let status = tokio::time::timeout(SCRIPT_LIMIT, child.wait()).await;
    // Whatever the script left behind (a receiver without its trap) goes too.
    // The `--` matters: procps-ng 4.0's kill reads `-KILL -12345` as a signal
    // to process group -1, i.e. to every process.
    if let Some(pid) = pid.filter(|p| *p > 1) {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
    let _ = server.child.kill().await;

    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let failure = match &status {
        Err(_) => Some(format!("timed out after {SCRIPT_LIMIT:?}")),
        Ok(Err(e)) => Some(format!("bash could not run: {e}")),
        Ok(Ok(s)) if !s.success() => Some(format!("exited with {s}")),
        Ok(Ok(_)) if !stdout.contains(DONE) => Some("stopped before its last block".into()),
        Ok(Ok(_)) => None,
    };
    if let Some(why) = failure {
        panic!(
            "tutorial {file} {why}\n\
             ---- script stdout (tail) ----\n{}\n\
             ---- script stderr (tail) ----\n{}\n\
             ---- server log (tail) ----\n{}",
            last_chars(&stdout, 12_000),
            last_chars(&stderr, 6_000),
            server_log(&logs)
        );
    }
    println!(
        "tutorial {file}: {} blocks passed in {:.1}s",
        blocks.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn keyvault_events_to_automation() {
    // Herald's own webhook URLs are reached internally: no CIDR allowance.
    run_tutorial("keyvault-events-to-automation.md", 12, &[]).await;
}

#[tokio::test]
async fn automation_webhooks() {
    run_tutorial("automation-webhooks.md", 12, &[]).await;
}

#[tokio::test]
async fn webhook_event_delivery() {
    // As the tutorial says: a receiver on 127.0.0.1 must be allowed.
    run_tutorial(
        "webhook-event-delivery.md",
        12,
        &["--delivery-allowed-cidrs", "127.0.0.0/8"],
    )
    .await;
}

#[tokio::test]
async fn event_hubs() {
    run_tutorial("event-hubs.md", 7, &[]).await;
}

#[test]
fn every_tutorial_has_a_test() {
    let mut found: Vec<String> = std::fs::read_dir(tutorials_dir())
        .expect("docs/tutorials exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    found.sort();
    assert_eq!(
        found, TUTORIALS,
        "docs/tutorials changed: give each tutorial its own test in tests/it/tutorials.rs"
    );
}

#[test]
fn only_sh_blocks_are_extracted() {
    let md = "# T\n\
              ```console\n$ herald serve\n```\n\
              text\n\
              ```sh\nherald status\necho \"a\"\n```\n\
              ```text\nsample output\n```\n\
              ```\nno language\n```\n\
              1. In a list:\n\
              \x20  ```sh\n\
              \x20  cat > f <<'EOF'\n\
              \x20    indented\n\
              \x20  EOF\n\
              \x20  ```\n\
              ````sh\n```console\nstill inside\n```\n````\n\
              ```sh title=\"x\"\nlast\n```\n";
    let blocks = sh_blocks(md).expect("well formed");
    assert_eq!(
        blocks,
        vec![
            ShBlock {
                line: 7,
                code: "herald status\necho \"a\"\n".into()
            },
            ShBlock {
                line: 18,
                code: "cat > f <<'EOF'\n  indented\nEOF\n".into()
            },
            ShBlock {
                line: 23,
                code: "```console\nstill inside\n```\n".into()
            },
            ShBlock {
                line: 28,
                code: "last\n".into()
            },
        ]
    );

    let s = script("t.md", &blocks);
    assert!(s.starts_with("set -Eeuo pipefail\n"), "{s}");
    assert!(
        s.contains("__herald_file='t.md' __herald_off=2\nherald status\n"),
        "{s}"
    );
    assert!(s.trim_end().ends_with(DONE), "{s}");

    assert!(sh_blocks("```bash\nls\n```\n").is_err());
    assert!(sh_blocks("```sh\nls\n").is_err());
    assert!(sh_blocks("```shell-session\n$ ls\n```\n").is_err());
    assert_eq!(sh_blocks("no code\n").map(|b| b.len()), Ok(0));
    assert_eq!(strip_ansi("\u{1b}[2mT\u{1b}[0m x=1"), "T x=1");
}

#[test]
fn a_failure_names_its_markdown_line() {
    let md = "# T\n\n```sh\necho one\n```\n\ntext\n\n```sh\necho two\nfalse\necho never\n```\n";
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script("t.md", &sh_blocks(md).expect("well formed")))
        .output()
        .expect("run bash");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert_eq!(stdout, "one\ntwo\n");
    assert!(
        stderr.contains("tutorial failed at t.md:11: false"),
        "{stderr}"
    );
}
