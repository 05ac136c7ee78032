//! `herald quickstart` as a newcomer runs it: a subprocess on a fresh
//! machine state, whose printed trail must show the whole seed-000 flow.

use std::process::Command;
use std::time::{Duration, Instant};

fn count_after(line: &str) -> u64 {
    line.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn quickstart_plays_the_seed_flow_and_prints_the_trail() {
    let data = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("quickstart")
        .arg("--data-dir")
        .arg(data.path().join("qs"))
        .env_remove("RUST_LOG")
        .env_remove("HERALD_TOKEN")
        .output()
        .expect("run herald quickstart");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "quickstart took {elapsed:?}"
    );

    // Both event types were delivered to the webhook.
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|l| l.contains(needle) && l.trim_start().starts_with("Microsoft.KeyVault"))
            .unwrap_or_else(|| panic!("no trail line for {needle}\n{stdout}"))
            .to_owned()
    };
    assert!(
        count_after(&line("SecretNewVersionCreated")) >= 1,
        "{stdout}"
    );
    assert_eq!(count_after(&line("SecretNearExpiry")), 1, "{stdout}");

    // Delivery attempts succeeded (Herald's webhook answers 202).
    let attempts = stdout.lines().filter(|l| l.contains(" 202 ")).count();
    assert!(attempts >= 2, "delivery attempts with 202:\n{stdout}");

    // The webhook's last-triggered time is shown.
    assert!(
        stdout.contains("last triggered: 20"),
        "webhook lastInvokedTime missing:\n{stdout}"
    );

    // The SecretNearExpiry job completed, and its input and output carry the event.
    let near_job = stdout
        .lines()
        .find(|l| l.contains("SecretNearExpiry") && l.contains("Completed"))
        .unwrap_or_else(|| panic!("no Completed SecretNearExpiry job:\n{stdout}"));
    assert!(near_job.contains("Completed"));
    let input_at = stdout.find("Input of job").expect("job input section");
    let output_at = stdout.find("Output of job").expect("job output section");
    let input = &stdout[input_at..output_at];
    assert!(
        input.contains("\"eventType\": \"Microsoft.KeyVault.SecretNearExpiry\""),
        "{input}"
    );
    let output = &stdout[output_at..];
    assert!(
        output.contains("\"eventType\":\"Microsoft.KeyVault.SecretNearExpiry\""),
        "job output lacks the event JSON:\n{output}"
    );
    assert!(output.contains("Rotated db-password"), "{output}");

    // The runbook created a new version of the secret.
    assert!(
        stdout.contains("'db-password' in vault 'payments': 2 versions"),
        "{stdout}"
    );
    assert!(stdout.contains("rotated "), "{stdout}");
}
