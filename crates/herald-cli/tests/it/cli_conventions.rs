//! What a command-line user and an operator expect of the binary (issue 24):
//! one server per data dir, secrets that stay off the screen and argv,
//! plain logs when stderr is not a terminal, and no temp dirs left behind.

use crate::binary::{free_port, start};
use crate::helpers::*;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The CLI, pointed at `app` through the environment, with no stored login.
fn cli(app: &TestApp, config_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env("HERALD_ADDR", format!("https://localhost:{}", app.port))
        .env("HERALD_CACERT", &app.ca_path)
        .env("HERALD_CONFIG_DIR", config_dir)
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_VAULT")
        .kill_on_drop(true);
    c
}

/// Runs `cmd` with `input` on stdin; returns (success, stdout, stderr).
async fn run_with_stdin(mut cmd: Command, input: &str) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herald");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("herald finishes within 60 s")
        .expect("wait for herald");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_second_server_on_one_data_dir_refuses_naming_the_first() {
    let data = tempfile::tempdir().expect("data dir");
    let logs = tempfile::tempdir().expect("logs");
    let port = free_port();
    let mut first = start(data.path(), port, logs.path(), 1, &["--sandbox", "none"]).await;
    let pid = first.child.id().expect("first server's pid");

    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--amqp-listen", "127.0.0.1:0", "--sandbox", "none"])
            .env("HERALD_ADMIN_TOKEN", TOKEN)
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_DATABASE")
            .env_remove("HERALD_DATA_DIR")
            .env_remove("HERALD_LISTEN")
            .current_dir(logs.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second server gives up at once")
    .expect("run the second server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second server started: {stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");

    // The first one is unharmed, and its lock goes with it: a restart works.
    let r = first
        .req(first.client.get(format!("{}/healthz", first.origin)))
        .await;
    assert_eq!(r.status, 200);
    first.child.kill().await.expect("stop the first server");
    let again = start(data.path(), port, logs.path(), 2, &["--sandbox", "none"]).await;
    drop(again);

    // Logs to a file carry no colour codes, and say which sandbox jobs get
    // and how to get bubblewrap's.
    let log = std::fs::read_to_string(logs.path().join("stderr-1-1.log")).expect("first log");
    assert!(!log.contains("\x1b["), "ANSI codes in a log file:\n{log}");
    assert!(log.contains("job sandbox in force"), "{log}");
    assert!(log.contains("install bubblewrap"), "{log}");
}

#[tokio::test]
async fn login_and_secret_set_take_secrets_from_stdin_and_files() {
    let app = spawn_app().await;
    let config_dir = tempfile::tempdir().expect("config dir");

    // The token comes from piped stdin and is never printed back.
    let (ok, stdout, stderr) = run_with_stdin(
        {
            let mut c = cli(&app, config_dir.path());
            c.arg("login");
            c
        },
        &format!("{TOKEN}\n"),
    )
    .await;
    assert!(ok, "login failed: {stdout}\n{stderr}");
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "the token was echoed: {stdout}\n{stderr}"
    );

    // `secret set NAME -` reads the value from stdin (using the stored login).
    let (ok, stdout, stderr) = run_with_stdin(
        {
            let mut c = cli(&app, config_dir.path());
            c.args(["secret", "set", "from-stdin", "-"]);
            c
        },
        "s3cr3t-from-stdin\n",
    )
    .await;
    assert!(ok, "secret set - failed: {stdout}\n{stderr}");
    let got = app
        .kv(reqwest::Method::GET, DEFAULT, "/secrets/from-stdin", None)
        .await;
    assert_eq!(got.expect(200)["value"], "s3cr3t-from-stdin");

    // `secret set NAME @FILE` reads the file byte for byte.
    let file = config_dir.path().join("value.pem");
    std::fs::write(&file, "-----BEGIN X-----\nabc\n-----END X-----\n").expect("write file");
    let (ok, stdout, stderr) = run_with_stdin(
        {
            let mut c = cli(&app, config_dir.path());
            c.args(["secret", "set", "from-file"])
                .arg(format!("@{}", file.display()));
            c
        },
        "",
    )
    .await;
    assert!(ok, "secret set @file failed: {stdout}\n{stderr}");
    let got = app
        .kv(reqwest::Method::GET, DEFAULT, "/secrets/from-file", None)
        .await;
    assert_eq!(
        got.expect(200)["value"],
        "-----BEGIN X-----\nabc\n-----END X-----\n"
    );

    // No value at all and stdin not a terminal: stdin is read.
    let (ok, stdout, stderr) = run_with_stdin(
        {
            let mut c = cli(&app, config_dir.path());
            c.args(["secret", "set", "piped"]);
            c
        },
        "piped-value",
    )
    .await;
    assert!(ok, "secret set without a value failed: {stdout}\n{stderr}");
    let got = app
        .kv(reqwest::Method::GET, DEFAULT, "/secrets/piped", None)
        .await;
    assert_eq!(got.expect(200)["value"], "piped-value");

    // A missing file is an error naming it, not a secret named "@...".
    let (ok, _, stderr) = run_with_stdin(
        {
            let mut c = cli(&app, config_dir.path());
            c.args(["secret", "set", "nope", "@/does/not/exist"]);
            c
        },
        "",
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("/does/not/exist"), "{stderr}");
}

#[cfg(unix)]
#[tokio::test]
async fn quickstart_keep_removes_its_temp_dir_on_sigterm() {
    let tmp = tempfile::tempdir().expect("TMPDIR");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["quickstart", "--keep"])
        .env("TMPDIR", tmp.path())
        .env_remove("RUST_LOG")
        .env_remove("HERALD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run herald quickstart --keep");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("Herald keeps running") {
                return;
            }
        }
        panic!("quickstart ended before keeping the server:\n{seen}");
    })
    .await
    .expect("quickstart reaches --keep within 60 s");
    let leftovers = || {
        std::fs::read_dir(tmp.path())
            .expect("read TMPDIR")
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("herald-quickstart-")
            })
            .count()
    };
    assert_eq!(leftovers(), 1, "the temp data dir exists while running");

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    // Drain stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("quickstart stops within 30 s of SIGTERM")
        .expect("wait for quickstart");
    assert_eq!(leftovers(), 0, "the temp data dir was left behind");
}
